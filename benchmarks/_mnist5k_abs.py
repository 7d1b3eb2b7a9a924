"""The MNIST-5k ABS run the curvature-cost benchmarks share (bench_decision_stop.py,
bench_warm_start.py): one place for the data split, the CNN, the optimizer and the schedule, so
the benchmarks compare the same training run."""

from __future__ import annotations

import torch

from hessbatch import SchedulerConfig
from hessbatch.deep import load_data, make_model


def mnist5k_abs(seed: int, epochs: int):
    """``(bundle, model, optimizer, config)``: the shipped 5000 digits split 4000/1000 by
    ``seed``, the small ReLU CNN (weights from ``seed``), SGD with momentum 0.9 and weight decay
    5e-4, and ABS from 128 to 2048 at lr 0.05 (x0.2 at epochs 10 and 15 when the run is longer),
    one eigenvalue check per 2000 samples."""
    torch.manual_seed(seed)
    bundle = load_data("mnist5k", seed=seed, test_fraction=0.2, default_shape=(1, 28, 28))
    torch.manual_seed(seed)
    model = make_model("cnn", bundle.input_shape, bundle.num_classes, activation="relu",
                       width=None)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    cfg = SchedulerConfig(method="abs", lr=0.05, batch_size=128, max_batch_size=2048,
                          samples_per_epoch=len(bundle.train), epochs=epochs,
                          lr_decay_epochs=tuple(e for e in (10, 15) if e < epochs),
                          lr_decay_factor=0.2, check_every=2000)
    return bundle, model, opt, cfg
