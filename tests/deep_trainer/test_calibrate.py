"""`hessbatch simulate --calibrate`: the measured profile and the predicted-vs-measured report.

No timing is asserted (the machine is shared): what is checked is that every measured constant
is a finite positive number, that the all-reduce fit recovers a known line exactly, and that
the report's predictions are the cost model applied to the run's own counts.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from hessbatch import MachineProfile, Workload, predict
from hessbatch.cli import main
from hessbatch.deep import load_data, make_model
from hessbatch.deep._calibrate import fit_ring, measure_allreduce, measure_model


def test_fit_ring_recovers_alpha_and_beta_exactly():
    alpha, beta = 3e-5, 2e-9
    for p in (2, 4):
        pts = [(n, 2 * (p - 1) * alpha + 2 * (p - 1) / p * n * beta) for n in (1, 10 ** 4,
                                                                               10 ** 6)]
        a, b, resid = fit_ring(pts, p)
        assert a == pytest.approx(alpha, rel=1e-9) and b == pytest.approx(beta, rel=1e-9)
        assert resid < 1e-9
    with pytest.raises(ValueError, match="two distinct"):
        fit_ring([(5, 1.0), (5, 2.0)], 2)


def test_timings_that_contradict_the_ring_model_are_refused_not_fitted():
    """Issue 21: under load the all-reduce timings were not monotone in the message size and
    the fitted latency and bandwidth were noise. A decreasing set and a flat/negative slope
    are refused with the points named; a noisy but increasing set is fitted."""
    from hessbatch.deep._calibrate import check_ring
    bad = [(1, 3e-4), (1 << 12, 1.5e-4), (1 << 16, 2e-4), (1 << 20, 9e-4)]
    with pytest.raises(ValueError, match=r"4096 values took 0.00015 s, less than 1 values"):
        check_ring(bad)
    with pytest.raises(ValueError, match="does not grow with the message size"):
        fit_ring([(1, 5e-4), (1 << 20, 4e-4)], 2)
    good = [(1, 1.0e-4), (1 << 12, 0.95e-4), (1 << 16, 1.3e-4), (1 << 20, 9e-4)]
    check_ring(good)                       # 5% down at 4096 values: timer noise, allowed
    a, b, resid = fit_ring(good, 2)
    assert a > 0 and b > 0 and resid < 1.0


def test_allreduce_between_two_gloo_processes():
    # sizes far apart: the check refuses timings that do not grow with the size
    res = measure_allreduce((1, 1 << 20), repeats=3)
    assert [n for n, _ in res["points"]] == [1, 1 << 20]
    assert set(res["spread_median_over_min"]) == {"1", str(1 << 20)}
    assert all(t > 0 and math.isfinite(t) for _, t in res["points"])
    assert res["alpha"] >= 0 and res["beta"] >= 0 and res["world_size"] == 2
    with pytest.raises(ValueError, match="world_size"):
        measure_allreduce((1, 2), world_size=1)
    with pytest.raises(ValueError, match="two distinct"):
        measure_allreduce((8, 8))


def test_measure_model_leaves_the_model_alone():
    bundle = load_data("synthetic:200", seed=0)
    torch.manual_seed(0)
    model = make_model("mlp", bundle.input_shape, bundle.num_classes, width=8)
    before = [p.detach().clone() for p in model.parameters()]
    m = measure_model(model, torch.nn.functional.cross_entropy, bundle.train, micro_batch=16,
                      hessian_batch=32, max_hvp=3, repeats=2)
    for key in ("time_per_sample", "time_per_update", "time_per_adversarial_sample",
                "time_per_hvp_sample"):
        assert m[key] > 0 and math.isfinite(m[key]), key
    assert m["time_per_check"] >= 0
    assert m["n_params"] == sum(p.numel() for p in model.parameters())
    assert 1 <= m["hvps_per_check"] <= 3
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with pytest.raises(ValueError, match="micro_batch"):
        measure_model(model, torch.nn.functional.cross_entropy, bundle.train, micro_batch=0)


def test_calibrate_command_compares_with_a_real_run(tmp_path, capsys):
    out = tmp_path / "calib"
    rc = main(["simulate", "--calibrate", "--repeats", "2", "--no-allreduce", "--format",
               "json", "--scaling", "1", "--out", str(out), "--train-args",
               "--model mlp --width 8 --data synthetic:300 --epochs 2 --method absa "
               "--batch-size 32 --max-batch 128 --check-every 120 --patience 2 --threads 1 "
               "--hessian-batch 32 --max-hvp 3"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    cal = doc["calibration"]
    metrics = json.loads((out / "train" / "metrics.json").read_text())
    profile = MachineProfile.load(out / "profile.json")
    assert profile == MachineProfile.from_dict(cal["profile"])
    assert profile.processes == 1 and profile.alpha == 0 and profile.beta == 0
    assert len(cal["epochs"]) == len(metrics["history"]) == 2
    prev_u = prev_s = 0
    for row, m in zip(cal["epochs"], metrics["history"]):
        # measured: the run's own times; predicted: the model on the run's own counts
        assert row["measured"] == pytest.approx(m["time_train"] + m["time_adversarial"]
                                                + m["time_eigenvalue"])
        w = Workload(m["updates"] - prev_u, m["samples"] - prev_s, m["adversarial_samples"],
                     len(m["eigenvalues"]) + m["eigenvalues_skipped"], m["hvps"])
        assert row["predicted"] == pytest.approx(predict(w, profile).total)
        assert row["relative_error"] == pytest.approx(row["predicted"] / row["measured"] - 1)
        prev_u, prev_s = m["updates"], m["samples"]
    assert sum(r["adversarial"] for r in cal["epochs"]) > 0  # absa: the adversary is costed
    assert math.isfinite(cal["relative_error"])
