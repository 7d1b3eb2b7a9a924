"""The trainer executes the core's decisions exactly: gradients, lr, adversary, eigenvalues,
checkpoints. Tiny models and data: every test runs in seconds."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset, TensorDataset

from hessbatch import Scheduler, SchedulerConfig
from hessbatch.deep import MLP, Trainer, load_checkpoint, synthetic_classification

SHAPE = (1, 6, 6)


def _data(n: int, seed: int = 0, dtype=torch.float32) -> TensorDataset:
    x, y = synthetic_classification(n, SHAPE, 3, seed=seed).tensors
    return TensorDataset(x.to(dtype), y)


def _model(seed: int = 0, dtype=torch.float32, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    net = MLP(SHAPE, 3, hidden=(8,), activation="softplus")
    if dropout:
        net.net.insert(3, nn.Dropout(dropout))
    return net.to(dtype)


def _config(method="abs", n=48, **kw) -> SchedulerConfig:
    base = dict(method=method, lr=0.1, batch_size=8, max_batch_size=32, samples_per_epoch=n,
                epochs=3)
    base.update(kw)
    return SchedulerConfig(**base)


class RecordingSGD(torch.optim.SGD):
    """SGD that records the gradient and the lr of every step."""

    def __init__(self, params, **kw):
        super().__init__(params, **kw)
        self.grads: list[list[torch.Tensor]] = []
        self.lrs: list[list[float]] = []

    def step(self, closure=None):
        self.grads.append([p.grad.detach().clone() for g in self.param_groups
                           for p in g["params"]])
        self.lrs.append([g["lr"] for g in self.param_groups])
        return super().step(closure)


def _scripted_any_mode(values):
    it = iter(values)
    return lambda model, loss_fn, batches, *, seed: next(it)


# ------------------------------------------------------------------------------ gradients

@pytest.mark.parametrize("n, batch, micro", [(48, 48, 16), (34, 12, 4), (40, 16, 8)])
def test_accumulated_gradient_equals_one_big_batch_gradient(n, batch, micro):
    data = _data(n, dtype=torch.float64)
    model = _model(dtype=torch.float64)
    opt = RecordingSGD(model.parameters(), lr=0.01)
    cfg = _config("bl", n=n, batch_size=batch, max_batch_size=batch, micro_batch_size=micro,
                  epochs=1)
    trainer = Trainer(model, opt, F.cross_entropy, data, cfg, seed=7)
    ref = _model(dtype=torch.float64)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=cfg.lr)  # the lr the core decides
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(7))  # the trainer's
    trainer.run()
    sizes = [min(batch, n - s) for s in range(0, n, batch)]
    assert [r[0] for r in trainer.update_log] == sizes
    assert [r[3] for r in trainer.update_log] == [math.ceil(s / micro) for s in sizes]
    start = 0
    for step, size in enumerate(sizes):
        idx = perm[start:start + size]
        start += size
        ref_opt.zero_grad()
        F.cross_entropy(ref(data.tensors[0][idx]), data.tensors[1][idx]).backward()
        for got, p in zip(opt.grads[step], ref.parameters()):
            torch.testing.assert_close(got, p.grad, rtol=1e-12, atol=1e-14)
        ref_opt.step()


def test_any_map_style_dataset_gives_the_same_run_as_a_tensor_dataset():
    data = _data(30)

    class Plain(Dataset):
        def __len__(self):
            return len(data)

        def __getitem__(self, i):
            return data[i]

    results = []
    for ds in (data, Plain()):
        model = _model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        Trainer(model, opt, F.cross_entropy, ds, _config("bl", n=30, epochs=2),
                test_data=ds).run()
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(results[0], results[1])


def test_last_batch_drop_skips_the_short_batch_unless_it_is_the_only_one():
    data = _data(40)
    model = _model()
    tr = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), F.cross_entropy, data,
                 _config("bl", n=40, batch_size=16, max_batch_size=16, epochs=2),
                 last_batch="drop")
    hist = tr.run()
    assert [r[0] for r in tr.update_log] == [16, 16, 16, 16]
    assert [m.samples for m in hist] == [32, 64]
    model = _model()
    tr = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), F.cross_entropy, data,
                 _config("bl", n=40, batch_size=64, max_batch_size=64, epochs=2),
                 last_batch="drop")
    tr.run()
    assert [r[0] for r in tr.update_log] == [40, 40]


# ------------------------------------------------------------------------------ decisions

@pytest.mark.parametrize("method", ["abs", "absa", "gg", "fb"])
def test_trainer_decisions_equal_the_core_replaying_the_same_events(method):
    n = 52  # not a multiple of the batches: short last batches every epoch
    data = _data(n)
    model = _model()
    opt = RecordingSGD(model.parameters(), lr=123.0)
    # eigenvalues: reference, drop (grow), no drop, negative (skipped), drop (grow), ...
    script = [4.0, 1.5, 1.4, -1.0, 0.5, 0.4, 0.1, 0.05, 0.01, 0.001] + [1e-4] * 50
    cfg = _config(method, n=n, batch_size=4, max_batch_size=64, micro_batch_size=4, epochs=6,
                  check_every=20, lr_decay_epochs=(2, 4), lr_decay_factor=0.5, patience=3,
                  adv_fraction=0.3, adv_stop=0.7, warmup_epochs=2)
    trainer = Trainer(model, opt, F.cross_entropy, data, cfg,
                      eigenvalue_fn=_scripted_any_mode(script),
                      adversary=lambda m, l, x, y, eps: x.flip(-1))
    hist = trainer.run()
    replay = Scheduler(cfg)
    steps = 0
    for kind, value in trainer.events:
        if kind == "step":
            d = replay.decision
            n_i, b, lr, micro_batches, n_adv = trainer.update_log[steps]
            assert (n_i, b) == (value, d.batch_size)
            assert lr == d.lr and opt.lrs[steps] == [d.lr]
            assert micro_batches == math.ceil(n_i / d.micro_batch_size)
            assert n_adv == d.adversarial_count(n_i)
            replay.step(value)
            steps += 1
        elif kind == "eigenvalue":
            replay.eigenvalue(value)
        elif kind == "skip":
            replay.skip_eigenvalue()
        else:
            replay.end_epoch()
    assert steps == len(trainer.update_log) == hist[-1].updates
    assert replay.state_dict() == trainer.scheduler.state_dict()
    assert replay.decision.finished
    if method in ("abs", "absa"):
        assert max(m.batch_size for m in hist) > 4  # the script made it grow
        assert ("skip", None) in trainer.events  # the negative value was skipped
        assert sum(m.eigenvalues_skipped for m in hist) == 1
    if method == "absa":
        assert sum(m.adversarial_samples for m in hist) > 0
    if method == "fb":
        assert {r[1] for r in trainer.update_log} == {64}


def test_lr_scale_of_a_param_group_multiplies_the_decided_lr():
    data = _data(16)
    model = _model()
    first, second = list(model.parameters())[:2], list(model.parameters())[2:]
    opt = RecordingSGD([{"params": first}, {"params": second, "lr_scale": 0.25}], lr=9.0)
    Trainer(model, opt, F.cross_entropy, data, _config("bl", n=16, epochs=1)).run()
    assert opt.lrs == [[0.1, 0.025], [0.1, 0.025]]


@pytest.mark.parametrize("rule", ["blocks", "batch"])
def test_adversarial_samples_sit_where_the_core_says_and_the_rest_are_clean(rule):
    n = 40
    data = _data(n)
    marker = 7.0
    seen = []

    class Recorder(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = _model()

        def forward(self, x):
            if self.training:
                seen.append((x == marker).flatten(1).all(1).tolist())
            return self.inner(x)

    model = Recorder()
    # blocks of B0 = 8, micro-batches of 4: c = floor(0.4 * 8) = 3 per block; after the
    # growth to 16 (gamma 0.2) one sample at 0 and one at 8, the second in micro-batch 3
    cfg = _config("absa", n=n, batch_size=8, max_batch_size=32, micro_batch_size=4, epochs=4,
                  adv_fraction=0.4, patience=1, check_every=16, adv_rule=rule)
    calls = []

    def adversary(m, loss_fn, x, y, eps):
        calls.append((x.shape[0], eps))
        return torch.full_like(x, marker)

    tr = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), F.cross_entropy, data,
                 cfg, eigenvalue_fn=_scripted_any_mode([5.0] * 20), adversary=adversary)
    hist = tr.run()
    replay, pos, steps, spread = Scheduler(cfg), 0, 0, 0
    for kind, value in tr.events:
        if kind == "eigenvalue":
            replay.eigenvalue(value)
        elif kind == "skip":
            replay.skip_eigenvalue()
        elif kind == "end_epoch":
            replay.end_epoch()
        else:
            n_i, b, lr, micro_batches, n_adv = tr.update_log[steps]
            flags = [f for mb in seen[pos:pos + micro_batches] for f in mb]
            pos, steps = pos + micro_batches, steps + 1
            want = [False] * n_i
            for a, z in replay.decision.adversarial_ranges(n_i):
                want[a:z] = [True] * (z - a)
            assert flags == want and n_adv == sum(want)
            spread += want != sorted(want, reverse=True)     # not all at the head
            replay.step(value)
    assert pos == len(seen) and steps == len(tr.update_log)
    assert (spread > 0) == (rule == "blocks")
    assert sum(r[4] for r in tr.update_log) == sum(m.adversarial_samples for m in hist) > 0
    assert all(eps == cfg.adv_eps for _, eps in calls)
    # adversary stops at tau * epochs = 2 -> after epoch 2; epochs 3 and 4 are clean
    assert hist[1].adversarial_samples > 0 and hist[2].adversarial_samples == 0


# ------------------------------------------------------------------------------ eigenvalues

def test_eigenvalue_function_gets_a_fresh_hessian_batch_and_training_stays_in_train_mode():
    data = _data(30)
    got, training_modes = [], []

    class Spy(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = _model()

        def forward(self, x):
            if torch.is_grad_enabled():            # the training passes (evaluation: no_grad)
                training_modes.append(self.training)
            return self.inner(x)

    def eig(m, loss_fn, batches, *, seed):
        got.append(([b[0].shape[0] for b in batches], seed, m.training))
        m.eval()  # leaves eval mode behind (the default solver restores the mode; this does not)
        return 1.0

    model = Spy()
    tr = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), F.cross_entropy, data,
                 _config("abs", n=30, batch_size=8, max_batch_size=16, epochs=2),
                 eigenvalue_fn=eig, hessian_batch_size=20)
    tr.run()
    assert len(got) == 2 and got[0][0] == [8, 8, 4]  # 20 samples in micro-batches of 8
    assert got[0][1] != got[1][1]
    # the function gets the model as training left it, in train mode: switching to eval mode
    # is the solver's job (the default, hessbatch.deep.top_eigenvalue, does; module docstring)
    assert [mode for _, _, mode in got] == [True, True]
    # and every training pass runs in train mode, also after the function switched to eval
    assert len(training_modes) == len(tr.update_log) and all(training_modes)


@pytest.mark.parametrize("decision_stop", [False, True])
def test_default_eigenvalue_is_the_curvature_modules_top_eigenvalue(decision_stop):
    from hessbatch.deep import top_eigenvalue

    data = _data(40)
    model = _model()
    tr = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), F.cross_entropy, data,
                 _config("abs", n=40, batch_size=8, max_batch_size=32, epochs=2),
                 hessian_batch_size=40, max_hvp=30, eig_tol=1e-6, decision_stop=decision_stop)
    hist = tr.run()
    assert all(len(m.eigenvalues) == 1 and m.hvps > 0 for m in hist)
    assert all(m.time_eigenvalue > 0 for m in hist)
    # the last eigenvalue: same model, the whole training set as Hessian batch
    direct = top_eigenvalue(model, F.cross_entropy, [(data.tensors[0], data.tensors[1])],
                            max_hvp=30, tol=1e-6, seed=0)
    last = hist[-1].checks[-1]
    if not decision_stop:
        # Lanczos at tol 1e-6 on both sides (other start vectors): the Ritz values agree to 2e-7
        # (float32 HVPs, measured); 1e-6 is the solver's tolerance
        assert last["status"] == "converged"
        assert math.isclose(hist[-1].eigenvalue, direct.value, rel_tol=1e-6)
    else:
        # the second check has a threshold (lam_ref / alpha); the solver stopped above it with
        # a lower bound of the same eigenvalue, in fewer products
        assert last["status"] == "lower_bound" and last["lower_bound"]
        assert last["threshold"] < hist[-1].eigenvalue <= direct.value * (1 + 1e-6)
        assert last["hvps"] < hist[0].checks[0]["hvps"]
        assert tr.events[-2][0] == "eigenvalue_bound"


@pytest.mark.parametrize("method", ["abs", "absa"])
def test_the_decision_stop_changes_no_decision_and_saves_products(method):
    """The same run with the solver stopped at the decision and solved to its tolerance: every
    batch size, lr and adversarial count equal; fewer HVPs with the stop."""
    runs = {}
    for stop in (True, False):
        data = _data(64)
        model = _model()
        tr = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), F.cross_entropy, data,
                     _config(method, n=64, batch_size=8, max_batch_size=64, epochs=4,
                             check_every=16, patience=2),
                     hessian_batch_size=32, max_hvp=20, eig_tol=1e-4, decision_stop=stop)
        hist = tr.run()
        runs[stop] = ([(n, b, k) for n, b, _, _, k in tr.update_log],
                      sum(m.hvps for m in hist), [c for m in hist for c in m.checks])
    assert runs[True][0] == runs[False][0]
    assert any(c["status"] == "lower_bound" for c in runs[True][2])
    assert runs[True][1] < runs[False][1]


@pytest.mark.parametrize("adversary", ["fgsm", "random"])
def test_absa_with_the_library_adversaries_times_and_counts_them(adversary):
    data = _data(40)
    model = _model()
    tr = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), F.cross_entropy, data,
                 _config("absa", n=40, batch_size=10, max_batch_size=40, epochs=2,
                         adv_fraction=0.3, adv_eps=0.05),
                 eigenvalue_fn=_scripted_any_mode([3.0] * 10), adversary=adversary)
    hist = tr.run()
    assert hist[0].adversarial_samples == 4 * 3 and hist[0].time_adversarial > 0


# ------------------------------------------------------------------------------ checkpoints

def _make(seed_model=0, **kw):
    data, test = _data(44, seed=1), _data(20, seed=2)
    model = _model(seed_model, dropout=0.2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    cfg = _config("absa", n=44, batch_size=4, max_batch_size=32, epochs=4, check_every=22,
                  patience=2, lr_decay_epochs=(3,), adv_fraction=0.5, adv_eps=0.02)
    return Trainer(model, opt, F.cross_entropy, data, cfg, test_data=test, seed=3,
                   adversary="random", max_hvp=5, hessian_batch_size=16, **kw)


def test_resumed_run_equals_the_uninterrupted_run_exactly(tmp_path):
    full = _make()
    full.run()
    part = _make()
    part.run(epochs=2)
    part.save(tmp_path / "ck.pt", extra={"note": "x"})
    resumed = _make(seed_model=99)  # different initial weights: all must come from the file
    state = load_checkpoint(tmp_path / "ck.pt")
    assert state["extra"] == {"note": "x"}
    resumed.load_state_dict(state)
    resumed.run()
    for p, q in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)
    assert full.scheduler.state_dict() == resumed.scheduler.state_dict()
    drop = ("time_train", "time_eigenvalue", "time_adversarial", "time_eval")
    strip = [{k: v for k, v in m.to_dict().items() if k not in drop} for m in full.history]
    assert strip == [{k: v for k, v in m.to_dict().items() if k not in drop}
                     for m in resumed.history]
    assert max(m.batch_size for m in full.history) > 4  # the run did grow the batch


def test_checkpoint_errors(tmp_path):
    tr = _make()
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "none.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read"):
        load_checkpoint(tmp_path / "bad.pt")
    torch.save({"format": "other"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a hessbatch trainer checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="format"):
        tr.load_state_dict({"format": "other"})
    state = tr.state_dict()
    state["version"] = 99
    with pytest.raises(ValueError, match="version"):
        tr.load_state_dict(state)
    other = _make()
    other.scheduler = Scheduler(_config("abs", n=44))
    with pytest.raises(ValueError, match="differs"):
        other.load_state_dict(tr.state_dict())


# ------------------------------------------------------------------------------ evaluation

def test_evaluate_returns_mean_loss_and_accuracy_and_restores_the_mode():
    data = _data(25)
    model = _model()
    tr = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), F.cross_entropy, data,
                 _config("bl", n=25), eval_batch_size=7)
    model.train()
    loss, acc = tr.evaluate(data)
    with torch.no_grad():
        out = model(data.tensors[0])
    assert math.isclose(loss, float(F.cross_entropy(out, data.tensors[1])), rel_tol=1e-5)
    assert acc == int((out.argmax(1) == data.tensors[1]).sum()) / 25
    assert model.training
    with pytest.raises(ValueError, match="test_data"):
        tr.evaluate()


# ------------------------------------------------------------------------------ errors

def test_bad_arguments_name_the_parameter():
    data = _data(10)
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    cfg = _config("bl", n=10)
    good = dict(model=model, optimizer=opt, loss_fn=F.cross_entropy, train_data=data,
                scheduler=cfg)
    cases = [
        (dict(scheduler=_config("bl", n=11)), ValueError, "samples_per_epoch"),
        (dict(model="net"), TypeError, "model"),
        (dict(optimizer=object()), TypeError, "optimizer"),
        (dict(loss_fn=3), TypeError, "loss_fn"),
        (dict(scheduler={"method": "bl"}), TypeError, "scheduler"),
        (dict(train_data=TensorDataset(torch.zeros(0, 1), torch.zeros(0))), ValueError,
         "empty"),
        (dict(adversary="pgd"), ValueError, "adversary"),
        (dict(last_batch="keep"), ValueError, "last_batch"),
        (dict(hessian_batch_size=0), ValueError, "hessian_batch_size"),
        (dict(max_hvp=1.5), TypeError, "max_hvp"),
        (dict(eig_tol=float("nan")), ValueError, "eig_tol"),
        (dict(eig_method="qr"), ValueError, "eig_method"),
        (dict(input_range=(1.0, 0.0)), ValueError, "input_range"),
        (dict(seed=-1), ValueError, "seed"),
        (dict(eigenvalue_fn=5), TypeError, "eigenvalue_fn"),
    ]
    for change, exc, match in cases:
        kw = dict(good, **change)
        args = [kw.pop(k) for k in ("model", "optimizer", "loss_fn", "train_data",
                                    "scheduler")]
        with pytest.raises(exc, match=match):
            Trainer(*args, **kw)


def test_training_past_the_last_epoch_is_refused():
    from hessbatch import SchedulerError

    data = _data(10)
    model = _model()
    tr = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), F.cross_entropy, data,
                 _config("bl", n=10, epochs=1))
    assert len(tr.run()) == 1 and tr.run() == tr.history
    with pytest.raises(SchedulerError, match="epochs"):
        tr.train_epoch()


# ------------------------------------------------------------------------------ CUDA

@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_run_matches_cpu_run_in_float64():
    runs = []
    for device in ("cpu", "cuda"):
        data = _data(40, dtype=torch.float64)
        model = _model(dtype=torch.float64).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        tr = Trainer(model, opt, F.cross_entropy, data,
                     _config("absa", n=40, batch_size=8, max_batch_size=32, epochs=2),
                     test_data=data, max_hvp=20, eig_tol=1e-8)
        hist = tr.run()
        assert all(p.device.type == device for p in model.parameters())
        runs.append((torch.cat([p.detach().cpu().flatten() for p in model.parameters()]),
                     hist))
    torch.testing.assert_close(runs[0][0], runs[1][0], rtol=1e-6, atol=1e-8)
    assert [m.batch_size for m in runs[0][1]] == [m.batch_size for m in runs[1][1]]
