"""Both backends take every decision from the one core.

The same config and the same scripted eigenvalue sequence drive the convex driver (NumPy/Numba)
and the deep trainer (PyTorch) over shuffled epochs of the same size. Neither backend decides
anything, so both must report the same event stream to the core, and run every update with the
same batch size, learning rate and adversarial count as a backend-free simulation of the core.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from hessbatch import METHODS, Scheduler, SchedulerConfig
from hessbatch.convex import LogisticRegression, load_mushroom
from hessbatch.convex import train as convex_train
from hessbatch.deep import Trainer

N = 300
SCRIPT = [8.0, 7.5, 3.0, 2.9, 2.8, 1.0, 1.2, 0.3, 0.31, 0.2, 0.19, 0.05]


def make_config(method: str) -> SchedulerConfig:
    return SchedulerConfig(
        method=method, lr=0.05, batch_size=32, max_batch_size=256, micro_batch_size=16,
        samples_per_epoch=N, epochs=8, lr_decay_epochs=(3, 6), lr_decay_factor=0.5,
        patience=2, adv_fraction=0.25, adv_eps=0.01, adv_decay=2.0, adv_stop=0.5,
        warmup_epochs=2.0)


def simulate(cfg: SchedulerConfig) -> tuple[list[tuple], list[tuple]]:
    """The core alone: shuffled epochs of N samples, the last batch of an epoch short."""
    sch, values = Scheduler(cfg), iter(SCRIPT)
    updates, events = [], []
    for _ in range(cfg.epochs):
        seen = 0
        while seen < N:
            d = sch.decision
            n = min(d.batch_size, N - seen)
            updates.append((n, d.lr, d.adversarial_count(n)))
            seen += n
            events.append(("step", n))
            if sch.step(n).eigenvalue_due:
                lam = next(values)
                sch.eigenvalue(lam)
                events.append(("eigenvalue", lam))
        sch.end_epoch()
        events.append(("end_epoch", None))
    return updates, events


def run_convex(cfg: SchedulerConfig) -> tuple[list[tuple], list[tuple]]:
    ds = load_mushroom(seed=0, n_train=N)
    model = LogisticRegression(ds.X_train, ds.y_train, lam=1e-3)
    values = iter(SCRIPT)
    run = convex_train(model, cfg, seed=0, sampling="shuffle",
                       eigenvalue_fn=lambda theta: next(values))
    updates, events = [], []
    for k in range(1, len(run.update)):
        n = int(run.batch_size[k])
        updates.append((n, float(run.lr[k]), int(run.adv_count[k])))
        events.append(("step", n))
        if not math.isnan(run.eigenvalue[k]):
            events.append(("eigenvalue", float(run.eigenvalue[k])))
        if run.epoch_end[k]:
            events.append(("end_epoch", None))
    return updates, events


def run_deep(cfg: SchedulerConfig) -> tuple[list[tuple], list[tuple]]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(N, 6, generator=g)
    y = (x.sum(dim=1) > 3).long()
    model = nn.Sequential(nn.Linear(6, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    values = iter(SCRIPT)
    trainer = Trainer(model, optimizer, nn.functional.cross_entropy, TensorDataset(x, y), cfg,
                      eigenvalue_fn=lambda m, loss, batches, *, seed: next(values),
                      hessian_batch_size=16, last_batch="step", seed=0)
    trainer.run()
    updates = [(n, lr, adv) for n, _, lr, _, adv in trainer.update_log]
    events = [(kind, value) for kind, value in trainer.events]
    return updates, events


@pytest.mark.parametrize("method", METHODS)
def test_convex_and_deep_backends_execute_the_same_decisions(method):
    cfg = make_config(method)
    expected_updates, expected_events = simulate(cfg)
    convex_updates, convex_events = run_convex(cfg)
    deep_updates, deep_events = run_deep(cfg)
    assert convex_events == expected_events
    assert deep_events == expected_events
    assert convex_updates == expected_updates
    assert deep_updates == expected_updates


def test_the_shared_script_reaches_every_branch_that_matters():
    """Guard against a vacuous comparison: the script must make the core grow by drop and by
    patience, reach B_max, decay the lr and run and stop the adversary."""
    updates, events = simulate(make_config("absa"))
    batches = [n for n, _, _ in updates]
    assert max(batches) == 256 and sorted(set(batches))[:1] == [N % 32 or 32]
    sch = Scheduler(make_config("absa"))
    reasons = set()
    for kind, value in events:
        d = {"step": lambda: sch.step(value), "eigenvalue": lambda: sch.eigenvalue(value),
             "end_epoch": sch.end_epoch}[kind]()
        reasons.add(d.reason)
    assert {"eigenvalue: dropped, grow", "eigenvalue: patience, grow"} <= reasons
    assert any("lr decays" in r for r in reasons)
    assert any(adv > 0 for _, _, adv in updates) and updates[-1][2] == 0
    assert np.isfinite([lr for _, lr, _ in updates]).all()
