"""Nothing lost, nothing silently wrong (issue 10) for `hessbatch train`, `eig` and the Trainer.

Each test is one fault class of docs/reliability.md; every run is a tiny synthetic one.
"""

from __future__ import annotations

import errno
import json
import os
import sys

import pytest
import torch
from torch import nn

from hessbatch import SchedulerConfig, _outputs
from hessbatch.cli import main
from hessbatch.deep import (MLP, Trainer, TrainingDiverged, checkpoint_digest, load_checkpoint,
                            synthetic_classification)
from hessbatch.deep import _cli_train

TINY = ["--model", "mlp", "--width", "4", "--data", "synthetic:120:1x6x6", "--batch-size", "8",
        "--max-batch", "32", "--hessian-batch", "16", "--max-hvp", "4", "--quiet"]


def _train(*extra):
    return main(["train", *TINY, *extra])


def _history(folder):
    return json.loads((folder / "metrics.json").read_text())["history"]


# ------------------------------------------------------------------- results never lost


def test_resume_without_out_writes_into_the_checkpoints_folder(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train("--method", "bl", "--epochs", "1", "--out", str(run)) == 0
    assert main(["train", "--resume", str(run / "checkpoint.pt"), "--epochs", "2",
                 "--quiet"]) == 0
    assert "writing to" in capsys.readouterr().err
    assert [m["epoch"] for m in _history(run)] == [1, 2]
    assert load_checkpoint(run / "checkpoint.pt")["scheduler"]["state"]["epoch"] == 2


def test_a_non_empty_out_is_refused_unless_overwrite(tmp_path, capsys):
    a = tmp_path / "a"
    assert _train("--method", "bl", "--epochs", "1", "--out", str(a), "--seed", "1") == 0
    before = (a / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    assert _train("--method", "bl", "--epochs", "1", "--out", str(a), "--seed", "2") == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "--overwrite" in err and "checkpoint.pt" in err
    assert (a / "checkpoint.pt").read_bytes() == before               # untouched
    assert _train("--method", "bl", "--epochs", "1", "--out", str(a), "--seed", "2",
                  "--overwrite") == 0
    assert (a / "checkpoint.pt").read_bytes() != before
    assert load_checkpoint(a / "checkpoint.pt")["extra"]["spec"]["seed"] == 2


@pytest.mark.parametrize("out, match", [
    ("", "--out is empty"),
    ("FILE", "is a file, not a folder"),
    ("FILE/sub", "is a file, so no folder"),
])
def test_a_bad_out_is_refused_before_any_work(tmp_path, monkeypatch, capsys, out, match):
    (tmp_path / "FILE").write_text("not a folder")
    out = out.replace("FILE", str(tmp_path / "FILE"))

    def no_work(*a, **k):
        raise AssertionError("the data was loaded before --out was checked")
    monkeypatch.setattr(_cli_train, "build_from_spec", no_work)
    assert _train("--method", "bl", "--epochs", "1", "--out", out) == 2
    assert match in capsys.readouterr().err


def test_an_unwritable_out_is_refused_before_epoch_one(tmp_path, monkeypatch, capsys):
    def refuse(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")
    monkeypatch.setattr(_outputs.tempfile, "mkstemp", refuse)     # root ignores chmod
    monkeypatch.setattr(_cli_train, "build_from_spec",
                        lambda *a, **k: pytest.fail("work started before the check"))
    assert _train("--method", "bl", "--epochs", "1", "--out", str(tmp_path / "r")) == 2
    assert "cannot write" in capsys.readouterr().err


def test_disk_full_while_saving_keeps_the_previous_checkpoint_and_no_tmp(tmp_path, monkeypatch,
                                                                         capsys):
    run = tmp_path / "run"
    assert _train("--method", "bl", "--epochs", "1", "--out", str(run)) == 0
    before = {p.name: p.read_bytes() for p in run.iterdir()}

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(_outputs.os, "fsync", full)
    capsys.readouterr()
    assert main(["train", "--resume", str(run / "checkpoint.pt"), "--epochs", "2",
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    errors = [ln for ln in err if "error" in ln]
    assert len(errors) == 1 and errors == err[-1:]           # one line, no traceback
    assert "No space left on device (disk full)" in err[-1] and "intact" in err[-1]
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before      # nothing changed


# ------------------------------------------------------------------- nothing silently wrong


def test_a_nan_loss_stops_with_the_epoch_and_update_and_keeps_the_last_good_checkpoint(
        tmp_path, capsys):
    run = tmp_path / "run"
    code = _train("--method", "bl", "--epochs", "3", "--lr", "1000", "--out", str(run))
    err = capsys.readouterr().err
    assert code == 3
    assert "training diverged in epoch 2, update 13" in err and "loss is nan" in err
    assert "last good checkpoint" in err and "after epoch 1" in err
    state = load_checkpoint(run / "checkpoint.pt")               # readable, checksum fine
    assert state["scheduler"]["state"]["epoch"] == 1
    assert all(bool(torch.isfinite(t).all()) for t in state["model"].values())
    doc = json.loads((run / "metrics.json").read_text())
    assert len(doc["history"]) == 1 and not doc["finished"] and "diverged" in doc["stopped"]
    # the numbers it did write are finite
    assert all(isinstance(m["train_loss"], float) and m["train_loss"] == m["train_loss"]
               for m in doc["history"])


def test_the_trainer_refuses_a_non_finite_gradient_before_the_update():
    data = synthetic_classification(32, (1, 4, 4), 2, seed=0)
    model = MLP((1, 4, 4), 2, hidden=(4,))

    def loss_fn(out, y):  # finite value, infinite gradient
        return nn.functional.cross_entropy(out, y) + 0 * torch.sqrt(out.abs()).sum()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()                                   # sqrt'(0) = inf
    before = [p.detach().clone() for p in model.parameters()]
    sch = SchedulerConfig(method="bl", lr=0.1, batch_size=16, samples_per_epoch=32, epochs=1)
    tr = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), loss_fn, data, sch)
    with pytest.raises(TrainingDiverged, match="epoch 1, update 1.*gradient is not finite") \
            as info:
        tr.run()
    assert (info.value.epoch, info.value.update, info.value.what) == (1, 1, "gradient")
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # no step


def _flip_weight_bytes(path):
    """Flip bytes inside the first weight tensor's data, keeping the file loadable."""
    raw = bytearray(path.read_bytes())
    state = torch.load(path, weights_only=True)
    weight = next(iter(state["model"].values()))
    needle = weight.contiguous().view(-1).view(torch.uint8).numpy().tobytes()[:16]
    at = bytes(raw).find(needle)
    assert at > 0
    for i in range(at, at + 16):
        raw[i] ^= 0x40
    path.write_bytes(bytes(raw))


def test_a_checkpoint_with_flipped_weight_bytes_is_refused_by_resume_and_eig(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train("--method", "bl", "--epochs", "1", "--out", str(run)) == 0
    ck = run / "checkpoint.pt"
    _flip_weight_bytes(ck)
    torch.load(ck, weights_only=True)                 # torch itself reads it without a word
    capsys.readouterr()
    assert main(["eig", str(ck)]) == 2
    assert "checksum mismatch" in capsys.readouterr().err
    assert main(["train", "--resume", str(ck), "--epochs", "2", "--quiet"]) == 2
    assert "checksum mismatch" in capsys.readouterr().err


def test_eig_refuses_another_version_and_a_foreign_spec(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train("--method", "bl", "--epochs", "1", "--out", str(run)) == 0
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    old = dict(state, version=1)
    old.pop("checksum")
    torch.save(old, tmp_path / "v1.pt")
    foreign = dict(state, extra={"spec": {"model": "mlp"}})
    foreign["checksum"] = checkpoint_digest(foreign)
    torch.save(foreign, tmp_path / "foreign.pt")
    capsys.readouterr()
    for name, match in (("v1.pt", "version 1 is not supported"), ("foreign.pt", "spec lacks")):
        assert main(["eig", str(tmp_path / name)]) == 2
        assert match in capsys.readouterr().err
        assert main(["train", "--resume", str(tmp_path / name), "--quiet"]) == 2
        assert match in capsys.readouterr().err


def test_resume_refuses_options_that_differ_from_the_checkpoint_by_name(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train("--method", "bl", "--epochs", "1", "--out", str(run)) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(run / "checkpoint.pt"), "--lr", "0.3", "--seed", "4",
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--lr 0.3 (checkpoint: 0.05)" in err and "--seed 4 (checkpoint: 0)" in err
    assert len(_history(run)) == 1                      # nothing trained, nothing written
    # the same values as the checkpoint's, or run options, are fine
    assert main(["train", "--resume", str(run / "checkpoint.pt"), "--lr", "0.05", "--epochs",
                 "2", "--checkpoint-every", "2", "--quiet"]) == 0


def test_epochs_on_resume_is_a_fresh_run_with_that_many_epochs_or_refused(tmp_path, capsys):
    # absa, 1 epoch: tau * epochs = 0.5, the adversary stops after epoch 1. A fresh 4-epoch
    # run would keep it until epoch 2, so extending this checkpoint is refused with the reason
    b = tmp_path / "b"
    assert _train("--method", "absa", "--adv-stop", "0.5", "--epochs", "1", "--out",
                  str(b)) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(b / "checkpoint.pt"), "--epochs", "4",
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "tau" in err and "epoch 2 with --epochs 4 instead of epoch 1" in err
    # bl extended from 1 to 3 epochs is exactly the 3-epoch run
    c, d = tmp_path / "c", tmp_path / "d"
    assert _train("--method", "bl", "--epochs", "3", "--out", str(c)) == 0
    assert _train("--method", "bl", "--epochs", "1", "--out", str(d)) == 0
    assert main(["train", "--resume", str(d / "checkpoint.pt"), "--epochs", "3",
                 "--quiet"]) == 0
    keys = ("train_loss", "test_accuracy", "lr", "updates")
    assert [[m[k] for k in keys] for m in _history(c)] == \
        [[m[k] for k in keys] for m in _history(d)]


def test_epochs_on_resume_mid_run_absa(tmp_path, capsys, monkeypatch):
    """Stop a 4-epoch absa run after epoch 1 (as a kill would), then change --epochs."""
    absa = ["--method", "absa", "--adv-stop", "0.5"]
    a = tmp_path / "a"
    real_run = Trainer.run

    def one_epoch(self, epochs=None, **kw):
        return real_run(self, 1, **kw)
    monkeypatch.setattr(Trainer, "run", one_epoch)
    assert _train(*absa, "--epochs", "4", "--out", str(a)) == 0
    monkeypatch.setattr(Trainer, "run", real_run)
    ck = str(a / "checkpoint.pt")
    assert load_checkpoint(ck)["scheduler"]["state"]["epoch"] == 1
    capsys.readouterr()
    # to 2 epochs: tau's epoch moves from 2 to 1, and the checkpoint is at epoch 1: refused
    assert main(["train", "--resume", ck, "--epochs", "2", "--quiet"]) == 2
    assert "past the first of them" in capsys.readouterr().err
    # to 3 epochs: tau's epoch ceil(1.5) = 2, the same: allowed, and a fresh 3-epoch run
    assert main(["train", "--resume", ck, "--epochs", "3", "--quiet"]) == 0
    fresh = tmp_path / "fresh"
    assert _train(*absa, "--epochs", "3", "--out", str(fresh)) == 0
    keys = ("train_loss", "adversarial_samples", "batch_size", "updates")
    assert [[m[k] for k in keys] for m in _history(a)] == \
        [[m[k] for k in keys] for m in _history(fresh)]
    assert _history(a)[1]["adversarial_samples"] > 0     # epoch 2 still adversarial


@pytest.mark.parametrize("extra, match", [
    (["--batch-size", "200", "--max-batch", "400"],
     "--batch-size 200 is larger than the training set (95"),
    (["--max-batch", "256"], "--max-batch 256 is larger than the training set (95"),
    (["--hessian-batch", "500"], "--hessian-batch 500 is larger than the training set"),
    (["--momentum", "1"], "--momentum must be in [0, 1)"),
    (["--momentum", "-0.5"], "--momentum must be finite and >= 0"),
])
def test_sizes_and_momentum_out_of_range_are_errors(extra, match, capsys):
    assert _train("--method", "abs", "--epochs", "1", *extra) == 2
    assert match in capsys.readouterr().err


def test_eig_refuses_a_hessian_batch_larger_than_the_training_set(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train("--method", "bl", "--epochs", "1", "--out", str(run)) == 0
    capsys.readouterr()
    assert main(["eig", str(run / "checkpoint.pt"), "--hessian-batch", "1000"]) == 2
    assert "--hessian-batch 1000 is larger than the training set (95 samples)" in \
        capsys.readouterr().err


def test_a_default_max_batch_larger_than_the_data_is_lowered_and_recorded(tmp_path, capsys):
    argv = [a for a in TINY]
    i = argv.index("--max-batch")
    del argv[i:i + 2]                                     # the default 2048 > 95 samples
    run = tmp_path / "run"
    assert main(["train", *argv, "--method", "abs", "--epochs", "1", "--out", str(run)]) == 0
    assert "note: --max-batch 2048 (default) is larger than the training set (95 samples): " \
           "using 88, the largest multiple of the micro-batch 8" in capsys.readouterr().err
    doc = json.loads((run / "metrics.json").read_text())
    assert doc["scheduler"]["max_batch_size"] == 88
    assert any("--max-batch 2048" in n for n in doc["spec"]["adjusted"])


# ------------------------------------------------------------------- the user's model


class _WithBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(16)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(16, 2)

    def forward(self, x):
        return self.fc(self.drop(self.bn(x.flatten(1))))


def _data():
    return synthetic_classification(32, (1, 4, 4), 2, seed=0)


def _sched(epochs=1, **kw):
    return SchedulerConfig(method="bl", lr=0.1, batch_size=8, samples_per_epoch=32,
                           epochs=epochs, **kw)


def test_frozen_batchnorm_and_dropout_stay_frozen_during_updates():
    model = _WithBN()
    model.train()
    model.bn.eval()
    model.drop.eval()
    stats = model.bn.running_mean.clone()
    seen = []
    model.bn.register_forward_hook(lambda m, i, o: seen.append(m.training))
    tr = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1),
                 nn.functional.cross_entropy, _data(), _sched())
    tr.run()
    assert seen and not any(seen)                          # eval in every forward
    assert torch.equal(model.bn.running_mean, stats)       # statistics never updated
    assert model.training and not model.bn.training and not model.drop.training


def test_a_custom_adversary_that_calls_backward_does_not_change_the_update():
    def clean(model, loss_fn, x, y, eps):
        return x.clone()

    def noisy(model, loss_fn, x, y, eps):
        loss_fn(model(x), y).mul(1000).backward()   # parameter grads the update must not see
        return x.clone()

    weights = []
    for adversary in (clean, noisy):
        torch.manual_seed(0)
        model = MLP((1, 4, 4), 2, hidden=(4,))
        cfg = SchedulerConfig(method="absa", lr=0.1, batch_size=8, max_batch_size=32,
                              micro_batch_size=4, samples_per_epoch=32, epochs=1,
                              adv_fraction=0.5)
        tr = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1),
                     nn.functional.cross_entropy, _data(), cfg, adversary=adversary,
                     eigenvalue_fn=lambda *a, **k: 1.0)
        tr.run()
        assert sum(m.adversarial_samples for m in tr.history) > 0
        weights.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*weights))


def _trainer(epochs=2, seed=0):
    torch.manual_seed(seed)
    model = MLP((1, 4, 4), 2, hidden=(4,))
    return Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                   nn.functional.cross_entropy, _data(), _sched(epochs=epochs))


def test_a_failed_load_leaves_the_trainer_as_it_was():
    donor = _trainer(seed=0)
    donor.run(1)
    state = donor.state_dict()
    state["model"] = {k: v for k, v in state["model"].items() if not k.endswith("bias")}
    target = _trainer(seed=1)
    before_sched = target.scheduler.state_dict()
    before_model = {k: v.clone() for k, v in target.model.state_dict().items()}
    before_gen = target.generator.get_state().clone()
    with pytest.raises(RuntimeError, match="Missing key"):
        target.load_state_dict(state)        # the scheduler part alone would have loaded
    assert target.scheduler.state_dict() == before_sched
    assert all(torch.equal(before_model[k], v) for k, v in target.model.state_dict().items())
    assert torch.equal(target.generator.get_state(), before_gen)
    assert target.history == []
    # and a good state still loads afterwards, completely
    target.load_state_dict(donor.state_dict())
    assert target.scheduler.state_dict() == donor.scheduler.state_dict()
    assert len(target.history) == 1


def test_save_in_the_middle_of_an_epoch_is_refused(tmp_path):
    model = MLP((1, 4, 4), 2, hidden=(4,))
    tr = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1),
                 nn.functional.cross_entropy, _data(), _sched())
    calls = []

    def on_update(trainer, d):
        if not calls:
            with pytest.raises(RuntimeError, match="middle of epoch 1"):
                trainer.save(tmp_path / "mid.pt")
        calls.append(d)
    tr.train_epoch(on_update)
    assert calls and not (tmp_path / "mid.pt").exists()
    tr.save(tmp_path / "end.pt")                            # at the epoch end: fine
    assert load_checkpoint(tmp_path / "end.pt")["scheduler"]["state"]["epoch"] == 1


def test_plotting_never_switches_the_matplotlib_backend():
    import matplotlib as mpl

    before = mpl.rcParams["backend"]
    mpl.rcParams["backend"] = "template"        # a notebook's choice, say
    try:
        tr = _trainer(epochs=1)
        tr.run()
        png = _cli_train.curves_png(tr.history, "t")
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        assert mpl.rcParams["backend"] == "template"
    finally:
        mpl.rcParams["backend"] = before


# ------------------------------------------------------------------- bad data


def test_a_truncated_mnist_npz_names_the_file(tmp_path):
    import numpy as np

    from hessbatch.deep import load_mnist5k
    good = tmp_path / "mine.npz"
    np.savez(good, images=np.zeros((10, 28, 28), np.uint8), labels=np.arange(10, dtype=np.uint8))
    assert len(load_mnist5k(good, sha256=None)) == 10
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good.read_bytes()[:3000])
    with pytest.raises(ValueError, match=f"cannot read {cut} .*truncated"):
        load_mnist5k(cut, sha256=None)


def _cifar_batch(path, labels):
    import pickle

    import numpy as np
    with open(path, "wb") as f:
        pickle.dump({b"data": np.zeros((len(labels), 3072), np.uint8), b"labels": list(labels)},
                    f, protocol=2)


def test_a_partial_cifar_folder_is_refused_unless_asked(tmp_path, capsys):
    from hessbatch.deep import load_cifar10, load_data
    for i in (1, 2, 3):
        _cifar_batch(tmp_path / f"data_batch_{i}", [0, 1])
    _cifar_batch(tmp_path / "test_batch", [2, 3])
    with pytest.raises(FileNotFoundError, match="lacks data_batch_4, data_batch_5 .3 of 5"):
        load_cifar10(tmp_path)
    assert len(load_cifar10(tmp_path, partial=True)) == 6
    assert len(load_data(f"cifar10-partial:{tmp_path}").train) == 6
    assert main(["train", "--data", f"cifar10:{tmp_path}", "--quiet"]) == 2
    assert "cifar10-partial" in capsys.readouterr().err


def test_a_bad_cifar_label_is_named(tmp_path):
    from hessbatch.deep import load_cifar10
    _cifar_batch(tmp_path / "test_batch", [3, 1, 42, 0])
    with pytest.raises(ValueError, match="got 42 at index 2"):
        load_cifar10(tmp_path, train=False)


def test_a_crafted_cifar_pickle_runs_no_code(tmp_path):
    import pickle

    from hessbatch.deep import load_cifar10
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": [0]}, f)
    with pytest.raises(ValueError, match="refused global (posix|os|nt).system"):
        load_cifar10(tmp_path, train=False)
    assert not marker.exists()


def test_train_exposes_warm_start_and_the_hvp_self_test(tmp_path, capsys):
    # --warm-start and --hvp-check reach the trainer's eigenvalue function, are recorded in the
    # checkpoint's spec, and a resume with another value is refused by name
    from hessbatch.cli import main as cli
    from hessbatch.deep import load_checkpoint
    base = ["train", "--model", "mlp", "--width", "4", "--data", "synthetic:96:1x6x6",
            "--batch-size", "8", "--max-batch", "16", "--hessian-batch", "16", "--max-hvp", "4",
            "--method", "abs", "--check-every", "48", "--epochs", "1", "--quiet",
            "--threads", "1"]
    assert cli([*base, "--warm-start", "--hvp-check", "warn", "--out", str(tmp_path / "w")]) == 0
    st = load_checkpoint(tmp_path / "w" / "checkpoint.pt")
    spec = st["extra"]["spec"]
    assert spec["warm_start"] is True and spec["hvp_check"] == "warn"
    assert st["eigenvalue_fn"]["vector"] is not None       # the kept eigenvector, checkpointed
    assert cli(["train", "--resume", str(tmp_path / "w" / "checkpoint.pt"), "--hvp-check",
                "off", "--epochs", "2", "--quiet"]) == 2
    assert "--hvp-check 'off' (checkpoint: 'warn')" in capsys.readouterr().err
    assert cli([*base, "--out", str(tmp_path / "c")]) == 0
    spec = load_checkpoint(tmp_path / "c" / "checkpoint.pt")["extra"]["spec"]
    assert spec["warm_start"] is False and spec["hvp_check"] == "error"


# ------------------------------------------------------------------- issue 24


def _no_allocation(monkeypatch):
    from hessbatch.deep import _data
    monkeypatch.setattr(_cli_train, "load_data",
                        lambda *a, **k: pytest.fail("the data was loaded before the check"))
    monkeypatch.setattr(_cli_train, "make_model",
                        lambda *a, **k: pytest.fail("the model was built before the check"))
    monkeypatch.setattr(_data, "synthetic_classification",
                        lambda *a, **k: pytest.fail("the data was generated before the check"))


@pytest.mark.parametrize("argv, match", [
    (["--width", "100000"],
     r"needs at least 5\.46 TiB of memory \(the weights, gradients and momentum of --model "
     r"cnn --width 100000 \(500,630,000,714 parameters\): 5\.46 TiB.*lower --width \(100000"),
    (["--model", "mlp", "--width", "100000"],
     r"needs at least 225 GiB .*--model mlp --width 100000 \(20,158,100,010 parameters\)"),
    (["--data", "synthetic:1000000000"],
     r"needs at least 5\.7 TiB of memory \(--data synthetic:1000000000 \(1,000,000,000 samples"
     r" of 1x28x28, and its train/test copies\): 5\.7 TiB.*ask for fewer samples"),
])
def test_a_model_or_data_too_large_is_refused_before_allocation(monkeypatch, capsys, argv,
                                                               match):
    import re

    from hessbatch import _cli_common
    # a 64 GiB machine, whatever runs the test
    monkeypatch.setattr(_cli_common, "available_memory", lambda: 64 * 2 ** 30)
    _no_allocation(monkeypatch)
    assert main(["train", *argv, "--epochs", "1", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(match, err[0]), err
    assert "more than the 64 GiB available" in err[0]


@pytest.mark.parametrize("name, shape", [("cnn", (1, 28, 28)), ("mlp", (1, 6, 6)),
                                          ("resnet18", (3, 32, 32))])
def test_the_parameter_count_is_exact_without_allocating(name, shape):
    from hessbatch.deep._models import make_model, parameter_count
    for width in (None, 3):
        real = make_model(name, shape, 10, width=width)
        assert parameter_count(name, shape, 10, width=width) == \
            sum(p.numel() for p in real.parameters())


def test_resume_refuses_typed_options_equal_to_their_defaults(tmp_path, capsys):
    # the case: an absa/B0 32 checkpoint; `--method abs --batch-size 128` typed (both
    # the defaults) used to continue silently as absa/32
    run = tmp_path / "r"
    assert main(["train", "--model", "mlp", "--width", "4", "--data", "synthetic:96:1x6x6",
                 "--method", "absa", "--batch-size", "32", "--max-batch", "64",
                 "--hessian-batch", "16", "--max-hvp", "4", "--epochs", "1", "--quiet",
                 "--out", str(run)]) == 0
    before = (run / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    assert main(["train", "--resume", str(run / "checkpoint.pt"), "--method", "abs",
                 "--batch-size", "128", "--epochs", "2", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--method 'abs' (checkpoint: 'absa'); --batch-size 128 (checkpoint: 32)" in err
    assert (run / "checkpoint.pt").read_bytes() == before
    # typed and equal to the checkpoint's value is fine, as is not typing it
    assert main(["train", "--resume", str(run / "checkpoint.pt"), "--method", "absa",
                 "--batch-size", "32", "--epochs", "2", "--quiet"]) == 0


def test_a_cifar_batch_pickled_with_protocol_5_is_accepted(tmp_path):
    import pickle

    import numpy as np

    from hessbatch.deep import load_cifar10
    data = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": data, b"labels": [3, 7]}, f, protocol=5)
    ds = load_cifar10(tmp_path, train=False)
    x, y = ds.tensors
    assert y.tolist() == [3, 7]
    assert torch.equal(x, torch.from_numpy(data.reshape(2, 3, 32, 32).astype(np.float32) / 255))


def test_train_refuses_a_locked_out_before_any_work(tmp_path, monkeypatch, capsys,
                                                   lock_holder):
    out = tmp_path / "dual"
    holder = lock_holder(out)
    monkeypatch.setattr(_cli_train, "build_from_spec",
                        lambda *a, **k: pytest.fail("work started on a locked --out"))
    assert _train("--epochs", "1", "--out", str(out)) == 2
    assert f"another hessbatch run (pid {holder.pid}) is writing" in capsys.readouterr().err


# ------------------------------------------------------------------- a resume continues its own run


def test_a_run_has_an_id_and_its_resume_keeps_it(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert _train("--method", "bl", "--epochs", "1", "--out", str(a)) == 0
    assert _train("--method", "bl", "--epochs", "1", "--out", str(b)) == 0
    ida = _cli_train.run_id_of(a / "checkpoint.pt")
    idb = _cli_train.run_id_of(b / "checkpoint.pt")
    assert ida and idb and ida != idb                       # two runs, two ids
    assert _cli_train.run_id_of(a / "metrics.json") == ida
    assert main(["train", "--resume", str(a / "checkpoint.pt"), "--epochs", "2",
                 "--quiet"]) == 0
    assert _cli_train.run_id_of(a / "checkpoint.pt") == ida  # the continuation is run a


def test_resume_of_another_runs_checkpoint_into_a_folder_is_refused_naming_out(tmp_path,
                                                                                capsys):
    # issue 24 item 2: `cp runB/checkpoint.pt runA/b.pt; train --resume runA/b.pt` replaced
    # run A's files with run B's continuation and exited 0
    a, b = tmp_path / "runA", tmp_path / "runB"
    assert _train("--method", "bl", "--epochs", "1", "--out", str(a), "--seed", "1") == 0
    assert _train("--method", "bl", "--epochs", "1", "--out", str(b), "--seed", "2") == 0
    (a / "b.pt").write_bytes((b / "checkpoint.pt").read_bytes())
    before = {n: (a / n).read_bytes() for n in ("checkpoint.pt", "metrics.json", "curves.png")
              if (a / n).exists()}
    capsys.readouterr()
    assert main(["train", "--resume", str(a / "b.pt"), "--epochs", "2", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "holds checkpoint.pt of another run" in err and "--out" in err
    assert {n: (a / n).read_bytes() for n in before} == before       # run A untouched
    # the continuation goes elsewhere, or replaces run A when asked to
    assert main(["train", "--resume", str(a / "b.pt"), "--epochs", "2", "--quiet", "--out",
                 str(tmp_path / "b2")]) == 0
    assert main(["train", "--resume", str(a / "b.pt"), "--epochs", "2", "--quiet",
                 "--overwrite"]) == 0
    assert _cli_train.run_id_of(a / "checkpoint.pt") == _cli_train.run_id_of(b / "checkpoint.pt")


def test_a_copy_of_the_folders_own_checkpoint_may_be_resumed(tmp_path):
    a = tmp_path / "a"
    assert _train("--method", "bl", "--epochs", "1", "--out", str(a)) == 0
    (a / "copy.pt").write_bytes((a / "checkpoint.pt").read_bytes())
    assert main(["train", "--resume", str(a / "copy.pt"), "--epochs", "2", "--quiet"]) == 0
    assert [m["epoch"] for m in _history(a)] == [1, 2]


@pytest.mark.parametrize("option, value, message", [
    ("--lr", "-0.1", "--lr must be finite and > 0, got -0.1"),
    ("--alpha", "0.5", "--alpha must be > 1"),
    ("--micro-batch", "3", "--micro-batch must divide batch_size = 8"),
])
def test_a_bad_scheduler_option_is_named_before_the_data_loads(monkeypatch, capsys, option,
                                                              value, message):
    """Before, `train --lr -0.1` was refused only after the data had loaded (the config needs
    the training-set size); now before any data, on one process or before --nproc's workers."""
    def no_data(*a, **k):
        pytest.fail("the data loaded before the options were checked")
    monkeypatch.setattr(_cli_train, "build_from_spec", no_data)
    for extra in ([], ["--nproc", "2"]):
        assert _train(option, value, *extra) == 2
        err = capsys.readouterr().err
        assert message in err, err
