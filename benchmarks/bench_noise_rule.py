"""The optional noise-aware growth rule (issue 11, part 3) on MNIST-5k, ReLU and softplus.

The ABS recipe of docs/results.md (small CNN, SGD momentum 0.9, weight decay 5e-4, 20 epochs,
lr 0.05 at B0 = 128 decayed by 0.2 after epochs 10 and 15, B_max 2048, a check every 2000
samples, Hessian batch 128, Lanczos at most 10 HVPs, tol 1e-2), with the eigenvalue screened by
:class:`hessbatch.deep._noise.NoiseAwareEigenvalue`: confidence drop test (z, 4 parts of the
Hessian batch) and progress guard (no check counts before the Hessian-batch loss is at most
``--min-loss-fraction`` of its value at the first check). Compare with BL B0 and the paper's
rule in docs/results.md (same recipe, same seeds).

Run:  python benchmarks/bench_noise_rule.py --activation softplus --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from hessbatch import Scheduler, SchedulerConfig
from hessbatch._noise_rule import NoiseRuleConfig
from hessbatch.deep import Trainer, load_data, make_model
from hessbatch.deep._noise import NoiseAwareEigenvalue


def one_run(seed, activation, rule, epochs=20):
    bundle = load_data("mnist5k", seed=seed, test_fraction=0.2, default_shape=(1, 28, 28))
    torch.manual_seed(seed)
    model = make_model("cnn", bundle.input_shape, bundle.num_classes, activation=activation)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    cfg = SchedulerConfig(method="abs", lr=0.05, batch_size=128, max_batch_size=2048,
                          samples_per_epoch=len(bundle.train), epochs=epochs,
                          lr_decay_epochs=(10, 15), lr_decay_factor=0.2, check_every=2000)
    sch = Scheduler(cfg)
    eig = NoiseAwareEigenvalue(sch, rule)
    tr = Trainer(model, opt, F.cross_entropy, bundle.train, sch, test_data=bundle.test,
                 eigenvalue_fn=eig, hessian_batch_size=128, seed=seed)
    t0 = time.perf_counter()
    hist = tr.run()
    return {"seed": seed, "activation": activation, "accuracy": hist[-1].test_accuracy,
            "updates": hist[-1].updates, "final_batch": hist[-1].batch_size,
            "hvps": sum(m.hvps for m in hist), "reported": sum(len(m.eigenvalues) for m in hist),
            "skipped": sum(m.eigenvalues_skipped for m in hist),
            "time_eig": sum(m.time_eigenvalue for m in hist),
            "time_train": sum(m.time_train for m in hist), "wall": time.perf_counter() - t0,
            "log": eig.log, "batch_by_epoch": [m.batch_size for m in hist]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--activation", choices=("relu", "softplus"), default="softplus")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--z", type=float, default=1.645)
    ap.add_argument("--min-loss-fraction", type=float, default=0.5)
    ap.add_argument("--out", type=Path, default=Path("runs/noise_rule"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    rule = NoiseRuleConfig(z=args.z, min_loss_fraction=args.min_loss_fraction)
    print(f"command: python benchmarks/bench_noise_rule.py --activation {args.activation} "
          f"--seeds {args.seeds} --z {args.z} --min-loss-fraction {args.min_loss_fraction}")
    print("| activation | seed | test acc. % | updates | final B | checks reported / skipped | "
          "HVPs | time train / eig s |")
    print("|---|---|---|---|---|---|---|---|")
    for seed in [int(s) for s in args.seeds.split(",")]:
        path = args.out / f"{args.activation}_seed{seed}.json"
        if path.is_file():
            r = json.loads(path.read_text())
        else:
            r = one_run(seed, args.activation, rule)
            path.write_text(json.dumps(r))
        print(f"| {args.activation} | {seed} | {100 * r['accuracy']:.1f} | {r['updates']} | "
              f"{r['final_batch']} | {r['reported']} / {r['skipped']} | {r['hvps']} | "
              f"{r['time_train']:.0f} / {r['time_eig']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
