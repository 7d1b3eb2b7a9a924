"""The plain-loop adapter and its batch sampler: same trajectory as the Trainer, resume, errors.

Tiny models and data in float64: every test runs in seconds."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from hessbatch import Scheduler, SchedulerConfig, SchedulerError
from hessbatch.deep import (MLP, AdaptiveBatchSampler, LoopAdapter, Trainer,
                            synthetic_classification)

SHAPE = (1, 4, 4)
N = 50  # not a multiple of the micro-batch: a short micro-batch and a short logical batch


def _data(n: int = N) -> TensorDataset:
    x, y = synthetic_classification(n, SHAPE, 3, seed=1).tensors
    return TensorDataset(x.double(), y)


def _model(dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(3)
    net = MLP(SHAPE, 3, hidden=(6,), activation="softplus")
    if dropout:
        net.net.insert(3, nn.Dropout(dropout))
    return net.double()


def _config(**kw) -> SchedulerConfig:
    # check_every of 20 samples puts eigenvalue checks (and growths) in the middle of epochs;
    # patience 1 makes every second check grow the batch.
    base = dict(method="absa", lr=0.05, batch_size=8, max_batch_size=32, micro_batch_size=4,
                samples_per_epoch=N, epochs=3, check_every=20, patience=1, adv_eps=0.05,
                adv_fraction=0.25, adv_stop=1.0, lr_decay_epochs=(2,), lr_decay_factor=0.5)
    base.update(kw)
    return SchedulerConfig(**base)


def _optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.9, weight_decay=1e-3)


def _trainer_run(cfg, dropout=0.0, seed=5):
    model = _model(dropout)
    torch.manual_seed(11)  # dropout's stream
    trainer = Trainer(model, _optimizer(model), F.cross_entropy, _data(), cfg, seed=seed,
                      hessian_batch_size=16)
    trainer.run()
    return model, trainer


def _plain_loop(adapter, model, optimizer, loader, stop_after_updates=None):
    """The loop of docs/integrations.md."""
    updates = 0
    while not adapter.finished:
        model.train()
        for x, y in loader:
            x, weight = adapter.micro_batch(x, y)
            (F.cross_entropy(model(x), y) * weight).backward()
            if adapter.update_complete:
                optimizer.step()
                optimizer.zero_grad()
                adapter.step()
                updates += 1
                if updates == stop_after_updates:
                    return
        adapter.end_epoch()


def _adapter_run(cfg, num_workers, dropout=0.0, seed=5):
    model = _model(dropout)
    opt = _optimizer(model)
    data = _data()
    hb = LoopAdapter(model, opt, F.cross_entropy, data, cfg, seed=seed, hessian_batch_size=16)
    loader = DataLoader(data, batch_sampler=hb.sampler, num_workers=num_workers,
                        generator=torch.Generator())
    torch.manual_seed(11)
    _plain_loop(hb, model, opt, loader)
    return model, hb


@pytest.mark.parametrize("num_workers", [0, 2])
def test_plain_loop_with_dataloader_gives_the_trainer_trajectory(num_workers):
    cfg = _config()
    ref_model, trainer = _trainer_run(cfg)
    model, hb = _adapter_run(cfg, num_workers)
    # the schedule did what the test is about: B grew mid-epoch, the adversary ran, lr decayed
    sizes = {r[1] for r in trainer.update_log}
    assert len(sizes) >= 3, sizes
    assert any(r[4] for r in trainer.update_log)
    assert sum(e[0] in ("eigenvalue", "eigenvalue_bound") for e in trainer.events) >= 3
    # exactly the same events (eigenvalues bit for bit), updates and final weights
    assert hb.events == trainer.events
    assert hb.update_log == trainer.update_log
    for a, b in zip(model.state_dict().values(), ref_model.state_dict().values()):
        assert torch.equal(a, b)


def test_same_trajectory_with_dropout_given_a_loader_generator():
    cfg = _config(method="abs", epochs=2)
    ref_model, trainer = _trainer_run(cfg, dropout=0.3)
    model, hb = _adapter_run(cfg, num_workers=0, dropout=0.3)
    assert hb.events == trainer.events
    for a, b in zip(model.state_dict().values(), ref_model.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("seeded", [True, False])
def test_dropout_masks_belong_to_the_micro_batch_not_to_the_loader(seeded):
    """iter(loader) without its own generator draws from the global RNG; the executor seeds
    the global RNG per micro-batch, so the dropout masks do not see it. Without that seeding
    (seed_micro_batches=False) the same loop drifts off the Trainer: the seeding is what
    makes the doors agree."""
    cfg = _config(method="abs", epochs=2)
    ref_model, _ = _trainer_run(cfg, dropout=0.3)
    model = _model(0.3)
    opt = _optimizer(model)
    hb = LoopAdapter(model, opt, F.cross_entropy, _data(), cfg, seed=5, hessian_batch_size=16,
                     seed_micro_batches=seeded)
    torch.manual_seed(11)
    _plain_loop(hb, model, opt, DataLoader(_data(), batch_sampler=hb.sampler))
    same = all(torch.equal(a, b) for a, b in
               zip(model.state_dict().values(), ref_model.state_dict().values()))
    assert same == seeded


def test_a_different_seed_gives_a_different_trajectory():
    cfg = _config(method="abs", epochs=1, lr_decay_epochs=())
    ref_model, _ = _trainer_run(cfg, seed=5)
    model, _ = _adapter_run(cfg, num_workers=0, seed=6)
    assert not all(torch.equal(a, b) for a, b in
                   zip(model.state_dict().values(), ref_model.state_dict().values()))


@pytest.mark.parametrize("stop", [3, 5, 9])
def test_resume_mid_epoch_from_one_state_dict_matches_uninterrupted(stop):
    cfg = _config()
    ref_model, ref = _adapter_run(cfg, num_workers=0)
    # run until `stop` updates (mid-epoch, B changing), save, rebuild everything, resume
    model = _model()
    opt = _optimizer(model)
    data = _data()
    hb = LoopAdapter(model, opt, F.cross_entropy, data, cfg, seed=5, hessian_batch_size=16)
    torch.manual_seed(11)
    _plain_loop(hb, model, opt, DataLoader(data, batch_sampler=hb.sampler), stop)
    assert 0 < hb.sampler.position <= N
    saved = {"model": model.state_dict(), "opt": opt.state_dict(), "hb": hb.state_dict()}
    saved = _roundtrip(saved)
    model2 = _model()
    model2.load_state_dict(saved["model"])
    opt2 = _optimizer(model2)
    opt2.load_state_dict(saved["opt"])
    hb2 = LoopAdapter(model2, opt2, F.cross_entropy, data, cfg, seed=999,  # seed restored
                      hessian_batch_size=16)
    hb2.load_state_dict(saved["hb"])
    _plain_loop(hb2, model2, opt2, DataLoader(data, batch_sampler=hb2.sampler, num_workers=2))
    assert hb.events + hb2.events == ref.events
    for a, b in zip(model2.state_dict().values(), ref_model.state_dict().values()):
        assert torch.equal(a, b)


def _roundtrip(obj):
    import io
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_sampler_micro_batches_cover_each_epoch_once_whatever_b_does():
    cfg = _config(method="abs")
    sch = Scheduler(cfg)
    s = AdaptiveBatchSampler(sch, seed=0)
    epoch = list(s)
    assert [len(b) for b in epoch] == [4] * 12 + [2]
    assert sorted(i for b in epoch for i in b) == list(range(N))
    again = list(s)  # no consumption reported: a new epoch, a new permutation
    assert sorted(i for b in again for i in b) == list(range(N)) and again != epoch
    assert s.accumulation_steps == 2 and len(s) == 13


def test_accumulation_count_is_readable_and_follows_growth():
    cfg = _config(method="abs", check_every=8)
    model = _model()
    hb = LoopAdapter(model, _optimizer(model), F.cross_entropy, _data(), cfg,
                     eigenvalue_fn=lambda *a, seed: 1.0)
    seen = []
    loader = DataLoader(_data(), batch_sampler=hb.sampler)
    for x, y in loader:
        seen.append(hb.sampler.accumulation_steps)
        x, w = hb.micro_batch(x, y)
        if hb.update_complete:
            hb.step()
    # patience 1: first check sets the reference, every later check grows 8 -> 16 -> 32
    assert seen[0] == 2 and max(seen) == 8 and seen == sorted(seen)


def test_lr_written_with_group_scales_and_unscaled_groups_refused():
    cfg = _config(method="bl", lr=0.2)
    model = _model()
    params = list(model.parameters())
    opt = torch.optim.SGD([{"params": params[:2], "lr_scale": 0.5}, {"params": params[2:]}],
                          lr=9.0)
    LoopAdapter(model, opt, F.cross_entropy, _data(), cfg)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.2]
    bad = torch.optim.SGD([{"params": params[:2], "lr": 0.1}, {"params": params[2:]}], lr=1.0)
    with pytest.raises(ValueError, match="lr_scale"):
        LoopAdapter(model, bad, F.cross_entropy, _data(), cfg)


def test_errors_name_the_problem():
    cfg = _config(method="abs")
    model = _model()
    opt = _optimizer(model)
    with pytest.raises(ValueError, match="samples_per_epoch"):
        LoopAdapter(model, opt, F.cross_entropy, _data(N + 1), cfg)
    with pytest.raises(TypeError, match="input_range must be a pair"):
        LoopAdapter(model, opt, F.cross_entropy, _data(), cfg, input_range=0.5)
    with pytest.raises(ValueError, match="adversary must be"):
        LoopAdapter(model, opt, F.cross_entropy, _data(), cfg, adversary="pgd")
    hb = LoopAdapter(model, opt, F.cross_entropy, _data(), cfg)
    x, y = _data()[:8]
    with pytest.raises(ValueError, match="batch_sampler=adapter.sampler"):
        hb.micro_batch(x, y)  # a DataLoader with batch_size=8, not the sampler's 4
    with pytest.raises(RuntimeError, match="before the logical batch is complete"):
        hb.step()
    hb.micro_batch(x[:4], y[:4])
    with pytest.raises(RuntimeError, match="middle of a logical batch"):
        hb.state_dict()
    with pytest.raises(RuntimeError, match="end_epoch"):
        hb.end_epoch()
    hb.micro_batch(x[4:], y[4:])
    with pytest.raises(RuntimeError, match="call optimizer.step"):
        hb.micro_batch(x[:4], y[:4])
    hb.step()
    with pytest.raises(ValueError, match="not a hessbatch loop state"):
        hb.load_state_dict({"format": "x"})
    other = LoopAdapter(model, opt, F.cross_entropy, _data(), _config(method="abs", lr=0.3))
    with pytest.raises(ValueError, match="differs"):
        other.load_state_dict(hb.state_dict())


def test_refused_eigenvalue_skips_the_check_and_never_grows():
    cfg = _config(method="abs", check_every=8)
    model = _model()
    hb = LoopAdapter(model, _optimizer(model), F.cross_entropy, _data(), cfg,
                     eigenvalue_fn=lambda *a, seed: float("nan"))
    for x, y in DataLoader(_data(), batch_sampler=hb.sampler):
        x, w = hb.micro_batch(x, y)
        if hb.update_complete:
            hb.step()
    assert {e[0] for e in hb.events} == {"step", "skip"}
    assert hb.decision.batch_size == 8
    with pytest.raises(SchedulerError):
        hb.compute_eigenvalue()


def test_the_loop_in_docs_integrations_runs(tmp_path):
    """docs/integrations.md's "after" loop, scaled down (sizes, epochs), runs to the end and
    resumes from its checkpoint."""
    import re
    from pathlib import Path
    text = (Path(__file__).resolve().parents[2] / "docs" / "integrations.md").read_text()
    diff = re.search(r"```diff\n(.*?)```", text, re.S).group(1)
    after = "\n".join(line[1:] for line in diff.splitlines() if line[:1] in " +")
    before = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    compile(before, "before", "exec")
    assert len(before.strip().splitlines()) <= 32
    for old, new in (("batch_size=128, max_batch_size=16384", "batch_size=8, max_batch_size=32"),
                     ("epochs=90", "epochs=2"), ("(30, 60, 80)", "(1,)"),
                     ("num_workers=2", "num_workers=0"),
                     ('"checkpoint.pt"', repr(str(tmp_path / "ckpt.pt")))):
        assert old in after
        after = after.replace(old, new)
    evaluated = []
    ns = {"make_model": lambda: _model(), "train_set": _data(), "device": "cpu",
          "evaluate": evaluated.append}
    exec(compile(after, "docs/integrations.md", "exec"), ns)
    hb = ns["hb"]
    assert hb.finished and len(evaluated) == 2
    assert [e for e in hb.events if e[0] == "end_epoch"] == [("end_epoch", None)] * 2
    weights = {k: v.clone() for k, v in ns["model"].state_dict().items()}
    again = dict(ns, evaluate=evaluated.append)
    exec(compile(after, "docs/integrations.md", "exec"), again)  # loads the finished run
    assert again["hb"].finished and again["hb"].events == [] and len(evaluated) == 2
    assert all(torch.equal(v, again["model"].state_dict()[k]) for k, v in weights.items())
