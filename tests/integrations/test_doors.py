"""One truth, every door: the same run through each way of training gives the same numbers.

The doors: :class:`~hessbatch.deep.Trainer`, :class:`~hessbatch.deep.LoopAdapter` in a plain
loop (DataLoader with ``num_workers`` 0 and 2), the Lightning callback, ``hessbatch train
--nproc 1`` and ``--nproc 2`` (gloo), and the Lightning callback under ``strategy="ddp"`` on 2
processes. The cells: every method (bl, fb, gg, abs, absa) and both adversarial rules, in float64
on a model with BatchNorm and Dropout, with a batch that grows from B0 = 4 past several B0
blocks to 16, micro-batches of 2 (accumulation) and 50 training samples (a short last batch).
Each cell compares final weights to 1e-10 and the decision history (events or per-epoch B, lr,
eigenvalues, updates) exactly.

Every run's configuration comes from one place: the command line's checkpoint (spec and
scheduler config) of the ``--nproc 1`` run, from which the library doors build their model,
data and optimizer with the command's own ``build_from_spec``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader

from hessbatch import SchedulerConfig
from hessbatch.deep import LoopAdapter, Trainer, load_checkpoint
from hessbatch.deep._cli_train import build_from_spec

HERE = Path(__file__).resolve().parent
TIMEOUT = 300
RTOL = 1e-10

BASE = ["--model", "mlp", "--width", "3", "--batchnorm", "--dropout", "0.25",
        "--data", "synthetic:63:1x4x4", "--test-fraction", "0.2", "--batch-size", "4",
        "--micro-batch", "2", "--max-batch", "16", "--epochs", "3", "--check-every", "12",
        "--patience", "1", "--hessian-batch", "8", "--max-hvp", "4", "--dtype", "float64",
        "--threads", "1", "--quiet", "--seed", "3", "--lr", "0.1", "--dist-timeout", "120"]
CELLS = {
    "bl": ["--method", "bl"],
    "fb": ["--method", "fb", "--warmup-epochs", "1"],
    "gg": ["--method", "gg", "--decay-epochs", "1,2", "--decay-factor", "0.5"],
    "abs": ["--method", "abs"],
    # gamma kept through the growths (decay 1) for the whole run (tau = 1): adversarial rows at
    # B = 8 > B0, where the two rules (and a wrong placement) differ
    "absa-blocks": ["--method", "absa", "--adv-fraction", "0.5", "--adv-rule", "blocks",
                    "--adv-decay", "1", "--adv-stop", "1"],
    "absa-batch": ["--method", "absa", "--adv-fraction", "0.5", "--adv-rule", "batch",
                   "--adv-decay", "1", "--adv-stop", "1"],
}


def _run(cmd: list[str], cwd=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
        env.pop(key, None)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=cwd, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{cmd} did not finish in {TIMEOUT} s\n{out}\n{err}")
    assert proc.returncode == 0, f"{cmd}\nstdout:\n{out}\nstderr:\n{err}"
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _cli(cell: str, out: Path, nproc: int) -> dict:
    _run([sys.executable, "-m", "hessbatch.cli", "train", *BASE, *CELLS[cell],
          "--nproc", str(nproc), "--out", str(out)])
    state = load_checkpoint(out / "checkpoint.pt")
    hist = json.loads((out / "metrics.json").read_text())["history"]
    return {"weights": state["model"], "spec": state["extra"]["spec"],
            "config": state["scheduler"]["config"],
            "history": [{k: v for k, v in m.items() if not k.startswith("time")}
                        for m in hist]}


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("doors")
    return {(cell, nproc): _cli(cell, root / f"{cell}-{nproc}", nproc)
            for cell in CELLS for nproc in (1, 2)}


def _build(ref: dict):
    spec = ref["spec"]
    bundle, model = build_from_spec(spec, torch.device("cpu"))
    config = SchedulerConfig.from_dict(ref["config"])
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=spec["momentum"],
                          weight_decay=spec["weight_decay"])
    options = dict(seed=spec["seed"], hessian_batch_size=spec["hessian_batch"],
                   eig_method=spec["eig_method"], max_hvp=spec["max_hvp"],
                   eig_tol=spec["eig_tol"], adversary=spec["adversary"])
    return bundle, model, config, opt, options


def _trainer_door(ref: dict):
    bundle, model, config, opt, options = _build(ref)
    tr = Trainer(model, opt, F.cross_entropy, bundle.train, config, test_data=bundle.test,
                 **options)
    tr.run()
    return model, tr.events, tr.update_log


def _loop_door(ref: dict, num_workers: int):
    bundle, model, config, opt, options = _build(ref)
    hb = LoopAdapter(model, opt, F.cross_entropy, bundle.train, config, **options)
    loader = DataLoader(bundle.train, batch_sampler=hb.sampler, num_workers=num_workers)
    while not hb.finished:
        model.train()
        for x, y in loader:
            x, weight = hb.micro_batch(x, y)
            (F.cross_entropy(model(x), y) * weight).backward()
            if hb.update_complete:
                opt.step()
                opt.zero_grad()
                hb.step()
        hb.end_epoch()
    return model, hb.events, hb.update_log


def _lightning_door(ref: dict):
    L = pytest.importorskip("lightning.pytorch")
    from hessbatch.deep.lightning import HessbatchCallback
    bundle, model, config, opt, options = _build(ref)
    seed = options.pop("seed")
    cb = HessbatchCallback(config, F.cross_entropy, seed=seed, **options)

    class Net(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self(x), y)

        def configure_optimizers(self):
            return opt

        def train_dataloader(self):
            return cb.dataloader(bundle.train)

    trainer = L.Trainer(max_epochs=config.epochs, accelerator="cpu", devices=1, logger=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, num_sanity_val_steps=0, callbacks=[cb])
    trainer.fit(Net())
    return model, cb.events, cb.update_log


def _close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        x, y = a[k].double() if a[k].is_floating_point() else a[k], \
            b[k].double() if b[k].is_floating_point() else b[k]
        assert torch.allclose(x, y, rtol=RTOL, atol=RTOL), \
            f"{k}: max difference {float((x - y).abs().max())}"


def _rounded(obj):
    """Floats to 10 significant digits (summation order differs across ranks by ~1e-16)."""
    if isinstance(obj, float):
        return float(f"{obj:.10g}")
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rounded(v) for v in obj]
    return obj


@pytest.mark.parametrize("cell", list(CELLS))
def test_every_door_gives_the_same_run(cell, cli_runs):
    ref = cli_runs[(cell, 1)]
    # the command line on 2 processes: the same history and weights
    two = cli_runs[(cell, 2)]
    assert _rounded(two["history"]) == _rounded(ref["history"])
    _close(two["weights"], ref["weights"])
    # the library doors: the same weights, and the same events and updates among themselves
    doors = {"trainer": _trainer_door(ref), "loop0": _loop_door(ref, 0),
             "loop2": _loop_door(ref, 2), "lightning": _lightning_door(ref)}
    first = doors["trainer"]
    updates = [u[0] for u in first[2]]
    assert sum(updates) == 3 * 50 and updates[-1] < max(updates)  # short last batch
    if cell in ("abs", "absa-blocks", "absa-batch"):
        assert max(u[1] for u in first[2]) == 16  # grew past several B0 blocks
    if cell.startswith("absa"):  # adversarial rows in batches of several B0 blocks (the core
        # stops the adversary at B_max = 16, so at B = 8: two blocks of 4, 2 rows each)
        assert any(b == 8 and k == 4 for _, b, _, _, k in first[2])
    for name, (model, events, log) in doors.items():
        _close(model.state_dict(), ref["weights"])
        assert events == first[1], name
        assert [(n, b, k) for n, b, _, _, k in log] == [(n, b, k) for n, b, _, _, k in first[2]]
        assert [lr for _, _, lr, _, _ in log] == pytest.approx([lr for _, _, lr, _, _ in first[2]],
                                                                rel=1e-15)


def test_the_old_adapter_placement_fails_the_absa_blocks_cell(cli_runs, monkeypatch):
    """The matrix can fail: an executor that puts ABSA's adversarial rows at the front of the
    logical batch (what LoopAdapter did before one executor) leaves the command line's run."""
    from hessbatch import Decision
    ref = cli_runs[("absa-blocks", 1)]
    core_rule = Decision.adversarial_ranges

    def leading(self, n):
        k = sum(b - a for a, b in core_rule(self, n))
        return [(0, k)] if k else []

    monkeypatch.setattr(Decision, "adversarial_ranges", leading)
    model, _, log = _loop_door(ref, 0)
    assert max(b for _, b, _, _, _ in log) > 4  # rows beyond B0: the rules differ there
    with pytest.raises(AssertionError):
        _close(model.state_dict(), ref["weights"])


@pytest.mark.parametrize("strategy, cells", [("ddp", ["abs", "absa-blocks"]),
                                              ("ddp_spawn", ["absa-blocks"])])
def test_lightning_ddp_on_two_processes_equals_nproc_2(cli_runs, tmp_path, strategy, cells):
    pytest.importorskip("lightning.pytorch")
    for cell in cells:
        (tmp_path / f"{cell}.json").write_text(json.dumps(
            {"spec": cli_runs[(cell, 2)]["spec"], "config": cli_runs[(cell, 2)]["config"]}))
    _run([sys.executable, str(HERE / "_lightning_ddp.py"), str(tmp_path), strategy, *cells],
         cwd=tmp_path)
    for cell in cells:
        got = torch.load(tmp_path / f"{cell}.pt", weights_only=True)
        _close(got["weights"], cli_runs[(cell, 2)]["weights"])
        assert got["world_size"] == 2
        # the processes were started as asked: the script run again, or spawned from it
        assert got["start_method"] == {"ddp": "popen", "ddp_spawn": "spawn"}[strategy]
        assert got["logged"] >= {"hessbatch/B", "hessbatch/lr", "hessbatch/adversarial",
                                 "hessbatch/hvps"}
