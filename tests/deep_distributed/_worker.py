"""Worker script for the data-parallel tests, started by torch.distributed.run (torchrun).

    python -m torch.distributed.run --standalone --nproc_per_node W _worker.py OUTDIR

Each rank runs every task below on the gloo backend in float64 and writes what it saw to
OUTDIR/rank{r}.pt; the tests compare it with the same computations in one process. The
single-process references are built by the same functions with ``world_size == 1`` (no
process group), so both sides share every option.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from hessbatch import SchedulerConfig
from hessbatch.deep import MLP, Trainer, synthetic_classification

SHAPE = (1, 4, 4)
N_TRAIN, N_TEST = 49, 21   # 49 = 6 x 8 + 1: a last batch of one sample, one rank gets none
#: the schedules under test: accumulation (micro 2, shards of 4 at B = 8), growth, adversary
RUNS = {
    "bl": dict(method="bl", batch_size=8, micro_batch_size=2, epochs=2, lr=0.2),
    "abs": dict(method="abs", batch_size=4, micro_batch_size=2, max_batch_size=32, epochs=3,
                check_every=12, patience=2, lr=0.2),
    "absa": dict(method="absa", batch_size=4, micro_batch_size=2, max_batch_size=16, epochs=3,
                 check_every=12, patience=1, adv_fraction=0.5, adv_eps=0.02, lr=0.2),
    "absa_random": dict(method="absa", batch_size=4, micro_batch_size=2, max_batch_size=16,
                        epochs=2, check_every=12, patience=1, adv_fraction=0.5, adv_eps=0.02,
                        lr=0.2),
}


def data(seed: int = 0):
    x, y = synthetic_classification(N_TRAIN + N_TEST, SHAPE, 3, seed=seed).tensors
    x = x.double()
    return TensorDataset(x[:N_TRAIN], y[:N_TRAIN]), TensorDataset(x[N_TRAIN:], y[N_TRAIN:])


def model(seed: int = 0):
    torch.manual_seed(seed)
    return MLP(SHAPE, 3, hidden=(6,), activation="softplus").double()


def make_trainer(name: str, distributed: bool, seed: int = 0, device: str = "cpu", **extra):
    """The run ``name``: a Trainer (one process) or a DistributedTrainer (in a group)."""
    kw = dict(RUNS[name])
    cfg = SchedulerConfig(samples_per_epoch=N_TRAIN, **kw)
    train, test = data()
    net = model().to(device)
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=0.9)
    cls = Trainer
    if distributed:
        from hessbatch.deep._distributed import DistributedTrainer
        cls = DistributedTrainer
    return cls(net, opt, F.cross_entropy, train, cfg, test_data=test, seed=seed,
               hessian_batch_size=15, max_hvp=6, eig_tol=1e-3,
               adversary="random" if name == "absa_random" else "fgsm", **extra)


def record(trainer) -> dict:
    drop = ("time_train", "time_eigenvalue", "time_adversarial", "time_eval",
            "time_grad_comm", "time_eigenvalue_comm")
    return {"history": [{k: v for k, v in m.to_dict().items() if k not in drop}
                        for m in trainer.history],
            "times": [{k: v for k, v in m.to_dict().items() if k in drop}
                      for m in trainer.history],
            "weights": {k: v.clone() for k, v in trainer.model.state_dict().items()},
            "updates": [(n, b, lr, k) for n, b, lr, _, k in trainer.update_log]}


def hvp_case():
    """A model, a Hessian batch of 13 samples (shards 7 and 6 on two ranks) and a vector."""
    torch.manual_seed(5)
    net = MLP(SHAPE, 3, hidden=(5,), activation="softplus").double()
    x = torch.rand(13, *SHAPE, dtype=torch.float64)
    y = torch.randint(3, (13,))
    v = [torch.randn_like(p) for p in net.parameters()]
    return net, x, y, v


def main(out: str) -> None:
    from hessbatch.deep._distributed import (DistributedConfigError,
                                             DistributedHessianOperator,
                                             distributed_top_eigenvalue, shard_bounds)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    res: dict = {"world_size": world}
    # 1. the same runs as one process
    for name in RUNS:
        tr = make_trainer(name, distributed=True)
        tr.run()
        res[name] = record(tr)
    # 2. the distributed HVP, gradient, dense Hessian and eigenvalues on a sharded batch
    net, x, y, v = hvp_case()
    lo, hi = shard_bounds(13, world, rank)
    local = [(x[lo:hi][:4], y[lo:hi][:4]), (x[lo:hi][4:], y[lo:hi][4:])]
    local = [b for b in local if b[0].shape[0]]
    op = DistributedHessianOperator(net, F.cross_entropy, local)
    res["hvp"] = {"hv": op.matvec(v), "grad": op.gradient(), "dense": op.dense(),
                  "loss": op.loss, "n": (op.local_samples, op.n_samples)}
    for method in ("lanczos", "power"):
        r = distributed_top_eigenvalue(net, F.cross_entropy, local, method=method,
                                       max_hvp=20, tol=0.0, seed=11)
        res["hvp"][method] = (r.value, r.n_hvp, [t.clone() for t in r.vector])
    # 3. errors every rank must see together, with nobody left waiting
    errors = {}
    try:  # a different seed on rank 1: the config hash differs
        make_trainer("bl", distributed=True, seed=rank)
    except DistributedConfigError as exc:
        errors["mismatch"] = str(exc)
    bad_x = x[lo:hi].clone()
    if rank == world - 1:
        bad_x[0] = float("nan")  # this rank's loss is NaN
    try:
        DistributedHessianOperator(net, F.cross_entropy, [(bad_x, y[lo:hi])])
    except ValueError as exc:
        errors["nan"] = str(exc)
    # ranks that resumed different states: only rank 0 loads the checkpoint of epoch 1,
    # then both train; the first update compares the states and stops every rank
    # (bl: the first collective is an update; abs: an eigenvalue may come first)
    for name in ("bl", "abs"):
        first = make_trainer(name, distributed=True)
        first.run(epochs=1)
        saved = first.state_dict()
        for who in ("rank 0 only", "every rank"):
            again = make_trainer(name, distributed=True)
            if who == "every rank" or rank == 0:
                again.load_state_dict(saved)
            try:
                again.run(epochs=1)
                errors[f"resume {name} {who}"] = None
            except DistributedConfigError as exc:
                errors[f"resume {name} {who}"] = str(exc)
    res["errors"] = errors
    dist.barrier()
    torch.save(res, os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1])
