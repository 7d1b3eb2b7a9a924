"""The Lightning callback with a real lightning.Trainer on CPU, synthetic data, float64.

B and lr follow the core event for event, the trajectory is the hessbatch Trainer's, a resumed
fit matches an uninterrupted one, and setups the callback cannot drive are refused."""

from __future__ import annotations

import textwrap

import lightning.pytorch as L
import pytest
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader

from hessbatch import Scheduler
from hessbatch.deep.lightning import HessbatchCallback

from .test_loop import N, _config, _data, _model, _optimizer, _trainer_run

pytestmark = [pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
              pytest.mark.filterwarnings("ignore:.*isinstance.treespec, LeafSpec.*")]


class Net(L.LightningModule):
    def __init__(self, loader_fn, init_seed=3, scheduler=False):
        super().__init__()
        self.net = _model() if init_seed == 3 else _reinit(_model(), init_seed)
        self.loader_fn = loader_fn
        self.with_scheduler = scheduler

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        opt = _optimizer(self)
        if self.with_scheduler:
            return [opt], [torch.optim.lr_scheduler.StepLR(opt, 1)]
        return opt

    def train_dataloader(self):
        return self.loader_fn()


def _reinit(model, seed):
    torch.manual_seed(seed)
    for p in model.parameters():
        p.data.normal_()
    return model


class StepRecorder(L.Callback):
    """What Lightning actually did, seen from outside: samples and lr at each optimizer step."""

    def __init__(self):
        self.samples, self.steps = 0, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.samples += len(batch[1])

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.steps.append((self.samples, optimizer.param_groups[0]["lr"]))
        self.samples = 0


def _fit(cfg, max_epochs, *, seed=5, ckpt_path=None, init_seed=3, num_workers=0, extra=(),
         **trainer_kw):
    cb = HessbatchCallback(cfg, F.cross_entropy, seed=seed, hessian_batch_size=16)
    data = _data()
    module = Net(lambda: cb.dataloader(data, num_workers=num_workers,
                                       generator=torch.Generator()), init_seed)
    rec = StepRecorder()
    kw = dict(max_epochs=max_epochs, accelerator="cpu", devices=1, precision="64-true",
              logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, num_sanity_val_steps=0)
    kw.update(trainer_kw)
    trainer = L.Trainer(callbacks=[cb, rec, *extra], **kw)
    trainer.fit(module, ckpt_path=ckpt_path)
    return trainer, module, cb, rec


def test_b_and_lr_follow_the_core_event_for_event_and_match_the_trainer():
    cfg = _config()
    trainer, module, cb, rec = _fit(cfg, cfg.epochs)
    # replay the events through a fresh core: each update is the decided B (or what is left
    # of the epoch) at the decided lr, as Lightning really stepped it
    sch, left, expected = Scheduler(cfg), N, []
    for kind, value in cb.events:
        if kind == "step":
            d = sch.decision
            assert value == min(d.batch_size, left)
            expected.append((value, d.lr))
            left -= value
            sch.step(value)
        elif kind in ("eigenvalue", "eigenvalue_bound"):
            sch.eigenvalue(value, lower_bound=kind == "eigenvalue_bound")
        elif kind == "end_epoch":
            assert left == 0
            sch.end_epoch()
            left = N
    assert rec.steps == expected
    assert trainer.global_step == len(expected) == sch.decision.updates
    assert len({b for _, b, *_ in cb.update_log}) >= 3  # B grew mid-epoch
    assert any(r[4] for r in cb.update_log)              # the adversary ran
    assert sch.decision.finished
    # and it is the hessbatch Trainer's trajectory, up to rounding (loss / K * K m / n)
    ref_model, ref = _trainer_run(cfg)
    eig = ("eigenvalue", "eigenvalue_bound")
    assert [e if e[0] not in eig else e[0] for e in cb.events] == \
        [e if e[0] not in eig else e[0] for e in ref.events]
    lam = [v for k, v in cb.events if k in eig]
    lam_ref = [v for k, v in ref.events if k in eig]
    assert lam == pytest.approx(lam_ref, rel=1e-9)
    for a, b in zip(module.net.state_dict().values(), ref_model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_resumed_fit_matches_an_uninterrupted_one(tmp_path):
    cfg = _config()
    _, full, cb_full, _ = _fit(cfg, 3)
    t1, _, cb1, _ = _fit(cfg, 1)
    path = tmp_path / "epoch1.ckpt"
    t1.save_checkpoint(path)
    # a different init and seed: everything must come from the checkpoint
    _, resumed, cb2, _ = _fit(cfg, 3, seed=77, init_seed=9, ckpt_path=str(path))
    assert cb1.events + cb2.events == cb_full.events
    assert cb2.decision == cb_full.decision
    for a, b in zip(resumed.state_dict().values(), full.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.filterwarnings("error:.*dataloader is not resumable.*")
def test_resume_from_a_mid_epoch_checkpoint_matches_too(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint
    cfg = _config()
    _, full, cb_full, _ = _fit(cfg, 3)
    every = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_top_k=-1,
                            filename="{step}")
    _, with_ckpt, cb_ckpt, _ = _fit(cfg, 3, extra=[every], enable_checkpointing=True)
    assert cb_ckpt.events == cb_full.events  # saving checkpoints changes nothing
    # one checkpoint inside epoch 1, one inside epoch 2 (after B grew)
    per_epoch = [len(g) for g in _split_epochs(cb_full.events)]
    assert per_epoch[0] >= 4 and per_epoch[1] >= 3, per_epoch
    # the callback's loader is resumable in Lightning's eyes: no "not resumable" warning
    for step in (3, per_epoch[0] + 2):
        _, resumed, cb2, _ = _fit(cfg, 3, seed=77, init_seed=9,
                                  ckpt_path=str(tmp_path / f"step={step}.ckpt"))
        assert cb2.decision == cb_full.decision
        assert cb2.events == cb_full.events[len(cb_full.events) - len(cb2.events):]
        assert sum(e[0] == "step" for e in cb2.events) == trainer_steps(cb_full) - step
        for a, b in zip(resumed.state_dict().values(), full.state_dict().values()):
            assert torch.equal(a, b)


def _split_epochs(events):
    epoch = []
    for kind, _ in events:
        if kind == "end_epoch":
            yield epoch
            epoch = []
        elif kind == "step":
            epoch.append(1)


def trainer_steps(cb):
    return sum(e[0] == "step" for e in cb.events)


def test_resume_without_the_checkpoint_differs():
    """The check above can fail: a fresh fit from epoch 0 with another seed is not the same."""
    cfg = _config(epochs=1, lr_decay_epochs=())
    _, a, _, _ = _fit(cfg, 1)
    _, b, _, _ = _fit(cfg, 1, seed=77)
    assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                     b.state_dict().values()))


def test_lightning_accumulate_grad_batches_is_refused():
    with pytest.raises(ValueError, match="accumulate_grad_batches=2"):
        _fit(_config(), 1, accumulate_grad_batches=2)


@pytest.mark.parametrize("problem, match", [
    ("loader", "batch_sampler=callback.sampler"),
    ("lr_scheduler", "lr scheduler"),
    ("limit", "limit_train_batches"),
    ("epochs", "max_epochs"),
    ("steps", "max_steps"),
])
def test_other_mismatched_setups_are_refused(problem, match):
    cfg = _config()
    cb = HessbatchCallback(cfg, F.cross_entropy)
    data = _data()
    if problem == "loader":
        module = Net(lambda: DataLoader(data, batch_size=8))
    else:
        module = Net(lambda: cb.dataloader(data), scheduler=problem == "lr_scheduler")
    kw = dict(max_epochs=4 if problem == "epochs" else 1, accelerator="cpu", devices=1,
              logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, num_sanity_val_steps=0)
    if problem == "limit":
        kw["limit_train_batches"] = 3
    if problem == "steps":
        kw["max_steps"] = 4
    with pytest.raises(ValueError, match=match):
        L.Trainer(callbacks=[cb], **kw).fit(module)
    with pytest.raises(ValueError, match="decided by the callback"):
        cb.dataloader(data, batch_size=8)


def test_a_checkpoint_inside_a_logical_batch_is_refused_with_advice(tmp_path):
    # validation after 3 micro-batches: the first logical batch (2 micro-batches) is done, the
    # second is half accumulated when ModelCheckpoint saves on validation end
    class WithVal(Net):
        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val", F.cross_entropy(self(x), y))

        def val_dataloader(self):
            return DataLoader(_data(), batch_size=25)

    cfg = _config()
    cb = HessbatchCallback(cfg, F.cross_entropy)
    data = _data()
    module = WithVal(lambda: cb.dataloader(data))
    from lightning.pytorch.callbacks import ModelCheckpoint
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, val_check_interval=3,
                        callbacks=[cb, ModelCheckpoint(dirpath=tmp_path, monitor="val")])
    # refused at the start of the fit, naming the setting, instead of crashing mid-fit
    with pytest.raises(ValueError, match="val_check_interval.*inside a logical batch"):
        trainer.fit(module)


def test_core_and_deep_never_import_lightning_and_its_absence_is_explained():
    """One subprocess: hessbatch and hessbatch.deep leave lightning unimported; with lightning
    made unimportable, hessbatch.deep.lightning says what to install."""
    import subprocess
    import sys
    code = textwrap.dedent("""
        import sys
        import hessbatch, hessbatch.deep
        loaded = [m for m in sys.modules if m == "lightning" or m.startswith("lightning.")
                  or m.startswith("pytorch_lightning")]
        assert not loaded, loaded
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "lightning" or name.startswith("lightning."):
                    raise ImportError("No module named " + repr(name))
        sys.meta_path.insert(0, Block())
        try:
            import hessbatch.deep.lightning
        except ImportError as exc:
            print(exc)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "pip install 'hessbatch[lightning]'" in out


# ---- refusals that name the user's own setting, and what the callback shows (issue 18) ----

def _bare_trainer(cb, **kw):
    base = dict(max_epochs=1, accelerator="cpu", devices=1, logger=False,
                enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, num_sanity_val_steps=0)
    base.update(kw)
    return L.Trainer(callbacks=[cb], **base)


@pytest.mark.parametrize("setting, match", [
    (dict(fast_dev_run=True), r"fast_dev_run=True"),
    (dict(overfit_batches=2), r"overfit_batches=2"),
    (dict(max_steps=4), r"max_steps=4\) could cut an epoch short"),
])
def test_lightning_settings_are_named_as_the_user_typed_them(setting, match):
    cfg = _config()
    cb = HessbatchCallback(cfg, F.cross_entropy)
    module = Net(lambda: cb.dataloader(_data()))
    with pytest.raises(ValueError, match=match):
        _bare_trainer(cb, **setting).fit(module)


def test_max_steps_that_cannot_cut_an_epoch_short_is_accepted():
    cfg = _config(epochs=1, lr_decay_epochs=())
    most = -(-N // cfg.batch_size)  # every update at B0
    trainer, _, cb, _ = _fit(cfg, 1, max_steps=most)
    assert cb.scheduler.decision.finished and trainer.global_step == len(cb.update_log)


def test_mid_epoch_validation_with_checkpointing_is_refused_before_training(tmp_path):
    class WithVal(Net):
        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val", F.cross_entropy(self(x), y))

        def val_dataloader(self):
            return DataLoader(_data(), batch_size=25)

    cb = HessbatchCallback(_config(), F.cross_entropy)
    module = WithVal(lambda: cb.dataloader(_data()))
    trainer = _bare_trainer(cb, val_check_interval=0.5, enable_checkpointing=True,
                            default_root_dir=tmp_path)
    with pytest.raises(ValueError, match="val_check_interval"):
        trainer.fit(module)
    assert cb.update_log == []  # refused before the first update
    # validation at epoch ends is fine
    cb = HessbatchCallback(_config(epochs=1, lr_decay_epochs=()), F.cross_entropy)
    module = WithVal(lambda: cb.dataloader(_data()))
    _bare_trainer(cb, enable_checkpointing=True, default_root_dir=tmp_path).fit(module)
    assert cb.scheduler.decision.finished


def test_resuming_a_checkpoint_made_without_the_callback_is_refused(tmp_path):
    data = _data()
    module = Net(lambda: DataLoader(data, batch_size=8))
    plain = _bare_trainer(L.Callback(), default_root_dir=tmp_path)
    plain.fit(module)
    plain.save_checkpoint(tmp_path / "plain.ckpt")
    cb = HessbatchCallback(_config(), F.cross_entropy)
    module = Net(lambda: cb.dataloader(data))
    with pytest.raises(ValueError, match="made without the callback"):
        _bare_trainer(cb, max_epochs=2).fit(module, ckpt_path=tmp_path / "plain.ckpt")


def test_a_callback_loader_without_the_callback_refuses_to_train():
    cb = HessbatchCallback(_config(), F.cross_entropy)
    module = Net(lambda: cb.dataloader(_data()))
    with pytest.raises(RuntimeError, match="not in Trainer\\(callbacks"):
        _bare_trainer(L.Callback()).fit(module)


def test_the_callback_logs_b_lr_eigenvalue_hvps_and_adversarial_counts():
    logged = []

    class Recorder(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            logged.append(dict(trainer.callback_metrics))

    cfg = _config()
    trainer, _, cb, _ = _fit(cfg, cfg.epochs, extra=(Recorder(),))
    keys = set().union(*logged)
    assert {"hessbatch/B", "hessbatch/lr", "hessbatch/eigenvalue", "hessbatch/hvps",
            "hessbatch/adversarial"} <= keys
    # the logged B of the last update is the B it used
    assert float(logged[-1]["hessbatch/B"]) == cb.update_log[-1][1]
    assert max(float(m["hessbatch/B"]) for m in logged if "hessbatch/B" in m) == \
        max(b for _, b, _, _, _ in cb.update_log)
    # progress-bar entries
    assert {"hessbatch/B", "hessbatch/lr"} <= set(trainer.progress_bar_metrics)


def test_sampler_batch_size_is_what_it_yields():
    cfg = _config()
    cb = HessbatchCallback(cfg, F.cross_entropy)
    assert cb.sampler.batch_size == cfg.micro_batch_size
    assert max(len(b) for b in cb.sampler) == cb.sampler.batch_size
    assert cb.sampler.logical_batch_size == cfg.batch_size
