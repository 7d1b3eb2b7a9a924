"""Data parallelism: N gloo processes reproduce the single-process run (float64, 1e-10).

The multi-process parts run in subprocesses started through torch.distributed's launcher
(``python -m torch.distributed.run --standalone`` for the library, ``hessbatch train --nproc 2``
for the command line), each with a hard timeout that kills the whole process group, so a hang
fails the test instead of blocking CI. One launch of ``_worker.py`` serves every library test.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from hessbatch import SchedulerConfig
from hessbatch.cli import main
from hessbatch.deep import HessianOperator, lanczos, power_iteration
from hessbatch.deep._distributed import (DistributedConfigError, DistributedTrainer,
                                         check_batch_layout, reachable_batch_sizes,
                                         shard_bounds)
from hessbatch.deep._hvp import flatten

HERE = Path(__file__).resolve().parent
RTOL = 1e-10
TIMEOUT = 240  # seconds per launch: generous for a loaded 2-core machine, finite for CI


def _load_worker():
    spec = importlib.util.spec_from_file_location("hessbatch_dist_worker", HERE / "_worker.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


W = _load_worker()


def _env(**extra) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **extra)
    env.pop("HESSBATCH_TEST_KILL", None)
    env.update(extra)
    return env


# Seen once in about 25 launches on the shared 2-core CI machine (never reproduced in 14
# launches by hand, idle or loaded): a gloo worker aborts with this line and exit -6, stdout
# empty. The line is the C++ runtime's (a thread destroyed while still joinable); its cause is
# not known. Such a launch is repeated once, with a warning that carries its stderr, and a
# second failure fails the test.
_GLOO_ABORT = "terminate called without an active exception"


def _run(cmd: list[str], env: dict | None = None, cwd=None, *,
         retry_abort: bool = True) -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own session; on timeout kill the whole group and fail."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env or _env(), cwd=cwd, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{cmd} did not finish in {TIMEOUT} s\nstdout:\n{out}\nstderr:\n{err}")
    if retry_abort and proc.returncode != 0 and _GLOO_ABORT in err and "exitcode: -6" in err:
        import warnings
        warnings.warn(f"a gloo worker aborted ({_GLOO_ABORT!r}); launching once more:\n{err}")
        return _run(cmd, env, cwd, retry_abort=False)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _close(a, b, path="") -> None:
    """Equal structures: ints/None/strings exactly, floats and tensors to RTOL relative."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{path}: {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.shape == b.shape and a.dtype == b.dtype, path
        scale = max(float(a.abs().max()), 1e-300) if a.numel() else 1.0
        err = float((a - b).abs().max()) if a.numel() else 0.0
        assert err <= RTOL * scale, f"{path}: max error {err:.3g} vs scale {scale:.3g}"
    elif isinstance(a, float) and not isinstance(b, bool):
        assert math.isclose(a, b, rel_tol=RTOL, abs_tol=1e-300), f"{path}: {a!r} != {b!r}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


# ------------------------------------------------------------------------- launched library

@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    r = _run([sys.executable, "-m", "torch.distributed.run", "--standalone",
              "--nproc_per_node", "2", str(HERE / "_worker.py"), str(out)])
    assert r.returncode == 0, f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    return [torch.load(out / f"rank{k}.pt", weights_only=False) for k in range(2)]


@pytest.fixture(scope="module")
def single():
    out = {}
    for name in W.RUNS:
        tr = W.make_trainer(name, distributed=False)
        tr.run()
        out[name] = W.record(tr)
    return out


@pytest.mark.parametrize("name", list(W.RUNS))
def test_two_processes_reproduce_one_process_to_1e_10(launched, single, name):
    one, two = single[name], launched[0][name]
    assert launched[0]["world_size"] == 2
    # per-epoch metrics: train/test loss, accuracy, eigenvalues, B, lr, updates, samples...
    _close(one["history"], two["history"], name)
    _close(one["weights"], two["weights"], name)
    # every update: samples, B, lr, adversarial count
    _close(one["updates"], two["updates"], name)
    # the run exercised what it is meant to: a 1-sample last batch (one rank empty), growth,
    # adversarial samples
    sizes = [u[0] for u in one["updates"]]
    assert min(sizes) < 2 or name != "bl"
    if name != "bl":
        assert max(m["batch_size"] for m in one["history"]) > W.RUNS[name]["batch_size"]
        assert sum(len(m["eigenvalues"]) for m in one["history"]) >= 2
    if name.startswith("absa"):
        assert sum(m["adversarial_samples"] for m in one["history"]) > 0


def test_the_comparison_tells_a_different_run_apart(single):
    other = W.make_trainer("abs", distributed=False, seed=1)  # another shuffling seed
    other.run()
    with pytest.raises(AssertionError):
        _close(single["abs"]["weights"], W.record(other)["weights"])
    with pytest.raises(AssertionError):
        _close(single["abs"]["history"], W.record(other)["history"])


def test_every_rank_reports_the_same_global_metrics(launched):
    for name in W.RUNS:
        assert launched[0][name]["history"] == launched[1][name]["history"]
        assert launched[0][name]["updates"] == launched[1][name]["updates"]
        _close(launched[0][name]["weights"], launched[1][name]["weights"])
    times = launched[0]["abs"]["times"][0]
    assert times["time_grad_comm"] > 0 and times["time_eigenvalue_comm"] > 0
    assert times["time_eigenvalue_comm"] <= times["time_eigenvalue"]


def test_distributed_hvp_gradient_and_eigenvalue_equal_one_process(launched):
    net, x, y, v = W.hvp_case()
    # one process, the whole 13-sample batch split differently
    op = HessianOperator(net, F.cross_entropy, [(x[:5], y[:5]), (x[5:], y[5:])])
    hv, grad, dense = op.matvec(v), op.gradient(), op.dense()
    for rank in (0, 1):
        got = launched[rank]["hvp"]
        assert got["n"] == ((7, 13) if rank == 0 else (6, 13))
        _close(flatten(hv), flatten(got["hv"]))
        _close(flatten(grad), flatten(got["grad"]))
        _close(dense, got["dense"])
        assert math.isclose(got["loss"], op.loss, rel_tol=RTOL)
    exact = float(torch.linalg.eigvalsh(dense).max())
    for method, solver in (("lanczos", lanczos), ("power", power_iteration)):
        ref = solver(HessianOperator(net, F.cross_entropy, [(x, y)]), max_hvp=20, tol=0.0,
                     seed=11)
        for rank in (0, 1):
            value, n_hvp, vector = launched[rank]["hvp"][method]
            assert n_hvp == ref.n_hvp
            assert math.isclose(value, ref.value, rel_tol=RTOL), (method, value, ref.value)
            _close(flatten(ref.vector), flatten(vector))
        assert launched[0]["hvp"][method][0] == launched[1]["hvp"][method][0]  # bitwise
        assert launched[0]["hvp"][method][0] <= exact * (1 + 1e-12)  # a Ritz value <= lam_max
    assert math.isclose(launched[0]["hvp"]["lanczos"][0], exact, rel_tol=1e-6)


def test_errors_are_raised_on_every_rank_together(launched):
    for rank in (0, 1):
        errors = launched[rank]["errors"]
        assert "different options" in errors["mismatch"] and "ranks [1]" in errors["mismatch"]
        assert "finite" in errors["nan"]
    assert "1 of 2 ranks" in launched[0]["errors"]["nan"]     # the healthy rank says why


def test_ranks_that_resumed_different_states_stop_together_at_the_first_update(launched):
    """A library user who loads the checkpoint on rank 0 only: every rank stops at the first
    update, naming what differs; loading it on every rank trains on."""
    for rank in (0, 1):
        for name in ("bl", "abs"):
            msg = launched[rank]["errors"][f"resume {name} rank 0 only"]
            assert msg is not None and "do not hold the same training state" in msg
            assert "the model's weights and buffers: ranks [0] / ranks [1]" in msg
            assert "the schedule (scheduler state)" in msg and "broadcast_object_list" in msg
            assert launched[rank]["errors"][f"resume {name} every rank"] is None


# ------------------------------------------------------------------------- in one process

def test_shard_bounds_cover_the_batch_in_order_with_sizes_within_one():
    for n in range(0, 23):
        for world in range(1, 6):
            parts = [shard_bounds(n, world, r) for r in range(world)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
            sizes = [hi - lo for lo, hi in parts]
            assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    with pytest.raises(ValueError, match="rank must be < world_size"):
        shard_bounds(4, 2, 2)
    with pytest.raises(ValueError, match="world_size"):
        shard_bounds(4, 0, 0)


def _cfg(**kw):
    base = dict(method="abs", lr=0.1, batch_size=4, micro_batch_size=2, max_batch_size=16,
                samples_per_epoch=64, epochs=4)
    base.update(kw)
    return SchedulerConfig(**base)


def test_reachable_batch_sizes_follow_the_cores_growth_rule():
    assert reachable_batch_sizes(_cfg()) == [4, 8, 16]
    # beta = 1.5: round_up to the micro-batch (6, 9 -> 10, 15 -> 16)
    assert reachable_batch_sizes(_cfg(beta=1.5)) == [4, 6, 10, 16]
    assert reachable_batch_sizes(_cfg(method="bl")) == [4]
    assert reachable_batch_sizes(_cfg(method="fb")) == [16]
    assert reachable_batch_sizes(_cfg(method="gg", lr_decay_epochs=(2,),
                                      lr_decay_factor=0.5)) == [4, 8]


def test_a_batch_that_does_not_split_is_an_error_naming_the_sizes_and_the_fix():
    check_batch_layout(_cfg(), 2)                      # 4, 8, 16 split into 2 x 2
    with pytest.raises(DistributedConfigError, match=r"reaches B = \[4, 6, 10, 16\], of "
                                                      r"which \[6, 10\] are not"):
        check_batch_layout(_cfg(beta=1.5), 2)
    # the command line's default micro-batch is B0: the message says which one works
    with pytest.raises(DistributedConfigError, match="2 x 8 = 16.*--micro-batch 4"):
        check_batch_layout(_cfg(batch_size=8, micro_batch_size=8, max_batch_size=32), 2)
    check_batch_layout(_cfg(batch_size=8, micro_batch_size=4, max_batch_size=32), 2)
    with pytest.raises(ValueError, match="world_size"):
        check_batch_layout(_cfg(), 0)


def test_the_distributed_trainer_needs_a_process_group():
    tr = W.make_trainer("bl", distributed=False)
    with pytest.raises(RuntimeError, match="init_process_group"):
        DistributedTrainer(tr.model, tr.optimizer, F.cross_entropy, tr.train_data,
                           tr.scheduler.config)


@pytest.fixture
def one_rank_group():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_the_state_check_comes_before_the_first_collective_an_update_or_an_eigenvalue(
        one_rank_group, monkeypatch):
    """After a load the ranks compare their states before whatever collective comes first: an
    update (`_open`) or, when one is due, the eigenvalue (its solver's products are
    collectives too: ranks with different states could wait on each other there)."""
    from hessbatch.deep._distributed import DataParallel
    calls = []
    real = DataParallel.check_state

    def recorder(self, adapter):
        calls.append(adapter.decision.eigenvalue_due)  # True only inside compute_eigenvalue
        real(self, adapter)
    monkeypatch.setattr(DataParallel, "check_state", recorder)
    tr = W.make_trainer("abs", distributed=True)
    tr.adapter.compute_eigenvalues = False     # the adapter's user computes them, as a loop may
    marked = []

    def on_update(trainer, decision):
        if decision.eigenvalue_due:
            if not marked:                     # as if a state had just been loaded here
                trainer.adapter.state_changed()
                marked.append(True)
            trainer.adapter.compute_eigenvalue()
    tr.run(epochs=1, on_update=on_update)
    assert marked and calls == [False, True]


def test_one_rank_distributed_trainer_is_bitwise_the_plain_trainer(one_rank_group):
    for name in ("absa", "absa_random"):
        plain = W.make_trainer(name, distributed=False)
        plain.run()
        ddp = W.make_trainer(name, distributed=True)
        ddp.run()
        a, b = W.record(plain), W.record(ddp)
        assert a["history"] == b["history"] and a["updates"] == b["updates"]
        assert all(torch.equal(a["weights"][k], b["weights"][k]) for k in a["weights"])


def test_hessian_batch_smaller_than_the_world_is_refused(one_rank_group, monkeypatch):
    tr = W.make_trainer("abs", distributed=False)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 32)
    with pytest.raises(DistributedConfigError, match="Hessian batch"):
        DistributedTrainer(tr.model, tr.optimizer, F.cross_entropy, tr.train_data,
                           SchedulerConfig.from_dict(dict(tr.scheduler.config.to_dict(),
                                                          batch_size=64, max_batch_size=64,
                                                          micro_batch_size=2,
                                                          samples_per_epoch=49)),
                           hessian_batch_size=15)


# ------------------------------------------------------------------------- command line

TINY = ["--model", "mlp", "--width", "4", "--data", "synthetic:120:1x6x6", "--batch-size", "8",
        "--micro-batch", "2", "--max-batch", "32", "--hessian-batch", "16", "--max-hvp", "4",
        "--quiet", "--dtype", "float64", "--threads", "1", "--method", "abs", "--patience", "1",
        "--check-every", "48", "--dist-timeout", "60"]


def _cli(*args, env=None) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "hessbatch.cli", "train", *TINY, *args], env=env)


def _outputs(folder: Path):
    hist = json.loads((folder / "metrics.json").read_text())["history"]
    keep = [{k: v for k, v in m.items() if not k.startswith("time")} for m in hist]
    weights = torch.load(folder / "checkpoint.pt", weights_only=True)["model"]
    return keep, weights


@pytest.fixture(scope="module")
def cli_reference(tmp_path_factory):
    """`hessbatch train` in one process, 3 epochs, and its first epoch alone."""
    root = tmp_path_factory.mktemp("cli")
    assert main(["train", *TINY, "--epochs", "3", "--out", str(root / "full")]) == 0
    assert main(["train", *TINY, "--epochs", "1", "--out", str(root / "one")]) == 0
    return root


def test_cli_nproc_2_reproduces_nproc_1(cli_reference, tmp_path):
    r = _cli("--epochs", "3", "--nproc", "2", "--out", str(tmp_path / "two"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("test acc %") == 1       # rank 0 prints, the other ranks do not
    one_h, one_w = _outputs(cli_reference / "full")
    two_h, two_w = _outputs(tmp_path / "two")
    _close(one_h, two_h)
    _close(dict(one_w), dict(two_w))
    assert max(m["batch_size"] for m in one_h) > 8  # the batch grew
    ck = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=True)
    assert ck["extra"]["world_size"] == 2 and ck["extra"]["spec"]["dtype"] == "float64"


def test_resume_from_2_on_1_and_from_1_on_2_continues_the_trajectory(cli_reference, tmp_path):
    full_h, full_w = _outputs(cli_reference / "full")
    # 2 -> 1: two processes train epoch 1, one process the rest
    r = _cli("--epochs", "1", "--nproc", "2", "--out", str(tmp_path / "a"))
    assert r.returncode == 0, r.stderr
    assert main(["train", "--resume", str(tmp_path / "a" / "checkpoint.pt"), "--epochs", "3",
                 "--out", str(tmp_path / "a"), "--quiet", "--threads", "1"]) == 0
    # 1 -> 2: one process trained epoch 1 (cli_reference/one), two processes the rest
    r = _run([sys.executable, "-m", "hessbatch.cli", "train", "--resume",
              str(cli_reference / "one" / "checkpoint.pt"), "--epochs", "3", "--nproc", "2",
              "--out", str(tmp_path / "b"), "--quiet", "--threads", "1"])
    assert r.returncode == 0, r.stderr
    for folder in ("a", "b"):
        h, w = _outputs(tmp_path / folder)
        _close(full_h, h, folder)
        _close(dict(full_w), dict(w), folder)


def test_a_killed_worker_is_restarted_and_the_run_ends_with_the_same_weights(
        cli_reference, tmp_path):
    marker = tmp_path / "killed"
    # 96 training samples, B = 8: update 18 is in the middle of epoch 2 (checkpoint: epoch 1)
    r = _cli("--epochs", "3", "--nproc", "2", "--max-restarts", "1", "--out",
             str(tmp_path / "run"), env=_env(HESSBATCH_TEST_KILL=f"1:18:{marker}"))
    assert r.returncode == 0, r.stderr
    assert marker.read_text().startswith("rank 1 killed itself before update 18")
    assert "restart 1: resuming from" in r.stderr
    full_h, full_w = _outputs(cli_reference / "full")
    h, w = _outputs(tmp_path / "run")
    _close(full_h, h)
    _close(dict(full_w), dict(w))


def test_kill_without_restarts_fails_with_the_launchers_report(tmp_path):
    r = _cli("--epochs", "2", "--nproc", "2", "--out", str(tmp_path / "run"),
             env=_env(HESSBATCH_TEST_KILL=f"1:3:{tmp_path / 'killed'}"))
    assert r.returncode == 1
    assert "a worker failed after 0 restart(s)" in r.stderr and "SIGKILL" in r.stderr


def test_cli_batch_that_does_not_split_fails_before_training_with_the_fix(tmp_path):
    r = _run([sys.executable, "-m", "hessbatch.cli", "train", *TINY, "--micro-batch", "8",
              "--nproc", "2", "--out", str(tmp_path / "x")])
    assert r.returncode == 2
    assert r.stderr.count("hessbatch train: error:") == 1
    assert "2 x 8 = 16" in r.stderr and "--micro-batch 4" in r.stderr
    assert not (tmp_path / "x" / "checkpoint.pt").exists()


@pytest.mark.parametrize("argv, message", [
    (["--nproc", "0"], "--nproc must be >= 1"),
    (["--max-restarts", "2"], "--max-restarts needs --nproc"),
    (["--max-restarts", "-1", "--nproc", "2"], "--max-restarts must be >= 0"),
    (["--sync-batchnorm"], "--sync-batchnorm needs several processes"),
    (["--dist-timeout", "0"], "--dist-timeout must be > 0"),
])
def test_bad_data_parallel_options_exit_2_naming_them(argv, message, capsys):
    assert main(["train", *TINY, *argv]) == 2
    assert message in capsys.readouterr().err


def test_resume_with_another_dtype_is_refused(cli_reference, capsys):
    assert main(["train", "--resume", str(cli_reference / "one" / "checkpoint.pt"),
                 "--dtype", "float32", "--quiet"]) == 2
    assert "trained in float64" in capsys.readouterr().err


def test_docstring_examples():
    import doctest

    from hessbatch.deep import _distributed
    result = doctest.testmod(_distributed, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 1 and result.failed == 0


def test_a_nan_on_two_processes_stops_every_rank_at_the_same_update(tmp_path):
    # The loss check is local in one process; with two ranks the stop comes after the gradient
    # all-reduce (a NaN on any rank is a NaN on every rank), so no rank is left waiting.
    r = _cli("--epochs", "3", "--nproc", "2", "--lr", "1e6", "--out", str(tmp_path / "hot"))
    assert r.returncode == 3, r.stderr
    assert r.stderr.count("training diverged in epoch 1, update 9") == 1  # rank 0, once
    assert "the gradient is not finite" in r.stderr
    # epoch 1 never finished: nothing was written, no half-written file either
    assert not (tmp_path / "hot").exists() or not any((tmp_path / "hot").iterdir())


# ------------------------------------------------------------------------------------------
# a cluster (issue 19): agreement on resume, stale checkpoints, stray variables, exit codes,
# BatchNorm. Each test launches 2 gloo processes once (or starts them by hand, as a scheduler
# without torchrun would), with a hard timeout.


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _by_hand(argvs: list[list[str]], *, timeout: float = TIMEOUT) -> list[tuple[int, str, str]]:
    """Start one `hessbatch train` per rank with RANK/WORLD_SIZE/MASTER_* (no torchrun, as a
    job script does); each rank its own command line. Returns (code, stdout, stderr) per rank."""
    port = _free_port()
    procs = []
    for rank, argv in enumerate(argvs):
        env = _env(RANK=str(rank), WORLD_SIZE=str(len(argvs)), LOCAL_RANK=str(rank),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, "-m", "hessbatch.cli", "train", *argv],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env=env, start_new_session=True))
    results = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                if q.poll() is None:
                    os.killpg(q.pid, signal.SIGKILL)
            pytest.fail(f"rank {procs.index(p)} did not finish in {timeout} s (a hang)")
        results.append((p.returncode, out, err))
    return results


def test_non_shared_out_rank_0_sends_the_checkpoint_to_every_rank(cli_reference, tmp_path):
    # Each node its own disk: only rank 0's --resume file exists. Before issue 19 rank 1
    # failed on the missing file (or started fresh after a restart) and rank 0 hung.
    common = ["--epochs", "3", "--quiet", "--threads", "1", "--dist-timeout", "60"]
    rank0 = ["--resume", str(cli_reference / "one" / "checkpoint.pt"), "--out",
             str(tmp_path / "node0"), *common]
    rank1 = ["--resume", str(tmp_path / "node1" / "checkpoint.pt"), "--out",
             str(tmp_path / "node1"), *common]                          # nothing there
    (c0, out0, err0), (c1, _, err1) = _by_hand([rank0, rank1])
    assert (c0, c1) == (0, 0), err0 + err1
    full_h, full_w = _outputs(cli_reference / "full")
    h, w = _outputs(tmp_path / "node0")
    _close(full_h, h)                       # the continuation of the 1-process run, to 1e-10
    _close(dict(full_w), dict(w))
    assert not (tmp_path / "node1").exists()  # only rank 0 writes


def test_ranks_that_disagree_on_resuming_fail_together_within_seconds(cli_reference, tmp_path):
    ck = str(cli_reference / "one" / "checkpoint.pt")
    common = ["--epochs", "3", "--quiet", "--threads", "1", "--dist-timeout", "600"]
    res = _by_hand([["--resume", ck, "--out", str(tmp_path / "a"), *common],
                    [*TINY, "--epochs", "3", "--out", str(tmp_path / "b")]], timeout=120)
    assert [c for c, _, _ in res] == [2, 2], res      # not the 600 s timeout: one clear error
    err = res[0][2]
    assert "ranks [0] were started with --resume and ranks [1] without" in err
    assert not (tmp_path / "a" / "metrics.json").exists()


def test_a_restart_does_not_resume_a_stale_checkpoint_of_another_run(cli_reference, tmp_path):
    # --overwrite into a folder holding an old run (another lr), then a crash before the new
    # run's first checkpoint: the restart used to resume the OLD run and report it as new.
    run = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "1", "--lr", "0.01", "--out", str(run)]) == 0
    old = (run / "checkpoint.pt").read_bytes()
    marker = tmp_path / "killed"
    r = _cli("--epochs", "3", "--nproc", "2", "--max-restarts", "1", "--overwrite", "--out",
             str(run), env=_env(HESSBATCH_TEST_KILL=f"1:3:{marker}"))    # update 3: epoch 1
    assert r.returncode == 0, r.stderr
    assert marker.exists() and "belongs to another run" in r.stderr
    assert (run / "checkpoint.pt").read_bytes() != old
    full_h, full_w = _outputs(cli_reference / "full")
    h, w = _outputs(run)
    _close(full_h, h)                        # the new run from its start, not the old one
    _close(dict(full_w), dict(w))


def test_stray_distributed_variables_are_one_clear_error_within_the_timeout(tmp_path):
    # RANK/WORLD_SIZE/MASTER_ADDR left in a login shell: plain `hessbatch train` waited forever
    env = _env(RANK="0", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    r = _run([sys.executable, "-m", "hessbatch.cli", "train", *TINY, "--epochs", "1",
              "--dist-timeout", "3", "--out", str(tmp_path / "x")], env=env)
    assert r.returncode == 2, r.stderr
    assert "joining a process group of 2 ranks from the environment (RANK=0 WORLD_SIZE=2" \
        in r.stderr
    assert r.stderr.count("hessbatch train: error:") == 1
    assert "did not form within --dist-timeout 3 s" in r.stderr and "unset these" in r.stderr
    # a rank other than 0 whose rank 0 never comes: the same, naming the address
    env["RANK"] = "1"
    r = _run([sys.executable, "-m", "hessbatch.cli", "train", *TINY, "--epochs", "1",
              "--dist-timeout", "3"], env=env)
    assert r.returncode == 2 and "no rendezvous at MASTER_ADDR:MASTER_PORT = 127.0.0.1:" \
        in r.stderr, r.stderr


def test_an_incomplete_set_of_variables_is_reported_and_ignored(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    assert main(["train", *TINY, "--epochs", "1", "--method", "bl"]) == 0
    assert "ignoring WORLD_SIZE=4 found in the environment" in capsys.readouterr().err


def test_nproc_ignores_stray_variables_and_runs(cli_reference, tmp_path):
    env = _env(RANK="3", WORLD_SIZE="8", MASTER_ADDR="10.255.255.1", MASTER_PORT="1")
    r = _cli("--epochs", "3", "--nproc", "2", "--out", str(tmp_path / "two"), env=env)
    assert r.returncode == 0, r.stderr
    assert "ignoring RANK=3 WORLD_SIZE=8" in r.stderr
    _close(_outputs(cli_reference / "full")[0], _outputs(tmp_path / "two")[0])


def test_a_divergence_under_torchrun_restarts_is_not_retried(tmp_path):
    # torchrun restarted the workers after exit 3 (the same NaN each time, a full attempt each)
    r = _run([sys.executable, "-m", "torch.distributed.run", "--standalone",
              "--nproc_per_node", "2", "--max-restarts", "2", "-m", "hessbatch.cli", "train",
              *TINY, "--epochs", "3", "--lr", "1e6", "--out", str(tmp_path / "hot")])
    assert r.returncode == 1, r.stderr       # torchrun's own code for any failed worker group
    assert r.stderr.count("training diverged in epoch 1, update 9") == 1   # trained once
    # each rank of the next attempt exits at once; the agent may stop the second rank before it
    # prints (timing), so at least one line; no rank trained again (the count above)
    assert r.stderr.count("not retried: an earlier attempt of this run exited 3") >= 1


def test_a_configuration_error_under_torchrun_restarts_is_not_retried(tmp_path):
    r = _run([sys.executable, "-m", "torch.distributed.run", "--standalone",
              "--nproc_per_node", "2", "--max-restarts", "2", "-m", "hessbatch.cli", "train",
              *TINY, "--micro-batch", "8", "--out", str(tmp_path / "x")])
    assert r.returncode == 1, r.stderr       # torchrun's own code for any failed worker group
    assert r.stderr.count("hessbatch train: error:") == 1      # the attempt that found it
    assert r.stderr.count("not retried: an earlier attempt of this run exited 2") >= 1  # timing


def test_resnet18_with_a_short_last_batch_on_2_processes_equals_1(tmp_path):
    # 43 training samples, B = 8, micro-batches of 4: the last batch has 3 samples. With
    # contiguous shards it was split 2 + 1 and BatchNorm refused the 1-sample shard; now the
    # 3 samples are one micro-batch of rank 0 and rank 1 runs a padding micro-batch.
    res = ["--model", "resnet18", "--width", "4", "--data", "synthetic:54:3x8x8",
           "--batch-size", "8", "--micro-batch", "4", "--max-batch", "16", "--hessian-batch",
           "8", "--max-hvp", "4", "--quiet", "--dtype", "float64", "--threads", "1",
           "--method", "abs", "--check-every", "16", "--patience", "1", "--epochs", "2"]
    assert main(["train", *res, "--out", str(tmp_path / "one")]) == 0
    r = _run([sys.executable, "-m", "hessbatch.cli", "train", *res, "--nproc", "2", "--out",
              str(tmp_path / "two")])
    assert r.returncode == 0, r.stderr
    one_h, one_w = _outputs(tmp_path / "one")
    two_h, two_w = _outputs(tmp_path / "two")
    assert one_h[0]["samples"] == 43 and one_h[0]["eigenvalues"]
    _close(one_h, two_h)                     # eigenvalues included (eval mode, replayed stats)
    _close(dict(one_w), dict(two_w))
    assert any("running_mean" in k for k in one_w)


def test_sync_batchnorm_on_the_cpu_is_refused_before_training(tmp_path):
    r = _cli("--epochs", "1", "--nproc", "2", "--batchnorm", "--sync-batchnorm", "--out",
             str(tmp_path / "x"))
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("hessbatch train: error:") == 1
    assert "SyncBatchNorm" in r.stderr and "--device cuda" in r.stderr


def test_resuming_on_a_process_count_that_does_not_fit_names_the_counts_that_do(
        cli_reference, tmp_path):
    # it used to suggest --micro-batch 4, which a resume refuses (the micro-batch is kept)
    r = _run([sys.executable, "-m", "hessbatch.cli", "train", "--resume",
              str(cli_reference / "one" / "checkpoint.pt"), "--epochs", "3", "--nproc", "3",
              "--out", str(tmp_path / "c"), "--quiet", "--threads", "1"])
    assert r.returncode == 2, r.stderr
    assert "resume on 1 or 2 or 4 process(es)" in r.stderr and "--micro-batch" not in r.stderr


def test_a_one_sample_last_micro_batch_with_batchnorm_is_refused_before_training():
    from hessbatch.deep import MLP, Trainer, synthetic_classification
    data = synthetic_classification(49, (1, 4, 4), 3, seed=0)   # 49 mod 4 = 1

    def make(batchnorm, micro=4, **kw):
        torch.manual_seed(0)
        m = MLP((1, 4, 4), 3, hidden=(6,), batchnorm=batchnorm)
        cfg = SchedulerConfig(method="bl", lr=0.1, batch_size=8, micro_batch_size=micro,
                              samples_per_epoch=49, epochs=1)
        return Trainer(m, torch.optim.SGD(m.parameters(), lr=0.1), F.cross_entropy, data, cfg,
                       **kw)

    with pytest.raises(ValueError, match=r"49 mod micro-batch 4 = 1.*'net\.2'.*--micro-batch.*"
                                         r"--last-batch drop"):
        make(True)
    with pytest.raises(ValueError, match=r"49 mod micro-batch 2 = 1"):
        make(True, micro=2)
    make(True, last_batch="drop").run()     # dropped: never run
    make(False).run()                       # no BatchNorm: the 1-sample micro-batch is fine
    # BatchNorm2d on one 4x4 image has 16 values per channel: it trains; the probe that found
    # this moved no statistics and drew no randomness
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.Dropout(0.5),
                         nn.Flatten(), nn.Linear(32, 3))
    cfg = SchedulerConfig(method="bl", lr=0.1, batch_size=8, micro_batch_size=4,
                          samples_per_epoch=49, epochs=1)
    stats = {k: v.clone() for k, v in conv.state_dict().items()}
    rng = torch.get_rng_state()
    tr = Trainer(conv, torch.optim.SGD(conv.parameters(), lr=0.1), F.cross_entropy, data, cfg)
    assert torch.equal(torch.get_rng_state(), rng) and conv.training
    assert all(torch.equal(v, conv.state_dict()[k]) for k, v in stats.items())
    tr.run()


def test_a_padding_micro_batch_joins_the_sync_batchnorm_collectives_with_zero_samples(
        one_rank_group, monkeypatch):
    # SyncBatchNorm needs CUDA, so its autograd function is replaced by a recorder here: what
    # is checked is that the padding forward calls it once per layer, on zero samples, in
    # training mode semantics (running statistics counted), and that other forwards do not.
    from torch.nn.modules import _functions
    from hessbatch.deep._distributed import DataParallel

    calls = []

    class Recorder(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, weight, bias, mean, var, eps, momentum, group, world):
            calls.append((tuple(x.shape), momentum, world))
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            return (g,) + (None,) * 8

    monkeypatch.setattr(_functions, "SyncBatchNorm", Recorder)
    dp = DataParallel()
    model = nn.SyncBatchNorm.convert_sync_batchnorm(
        nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2), nn.BatchNorm1d(2)))
    for m in model.modules():
        if isinstance(m, nn.SyncBatchNorm):
            m.register_forward_hook(dp._join_sync_batchnorm)
    model.eval()
    x = torch.randn(1, 3)
    plain = model(x)
    assert calls == []                                   # not a padding micro-batch
    dp.before_forward(5, padding=True)
    out = model(x)
    assert calls == [((0, 4), 0.1, 1), ((0, 2), 0.1, 1)]  # one per layer, zero samples
    assert torch.equal(out, plain)                       # the eval output is unchanged
    out.sum().backward()                                 # the empty branch is in the graph
    assert [int(m.num_batches_tracked) for m in model.modules()
            if isinstance(m, nn.SyncBatchNorm)] == [1, 1]
    dp.close_batch(None)
    model(x)
    assert len(calls) == 2                               # over after the update


def test_sigterm_to_the_launcher_is_one_line_and_128_plus_the_signal(tmp_path):
    import time
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "hessbatch.cli", "train", *TINY, "--epochs",
                             "500", "--nproc", "2", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(), start_new_session=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (out / "metrics.json").exists():   # training is under way (epoch 1 written)
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "hessbatch train: stopped by SIGTERM" in err
    assert "Traceback" not in err, err


def test_worker_threads_count_the_affinity_mask_not_the_machine(monkeypatch):
    # a container limited to 3 cores (cpuset) on a 64-core machine: os.cpu_count() says 64
    from hessbatch.deep import _cli_distributed
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert _cli_distributed._cpu_count() == 3
