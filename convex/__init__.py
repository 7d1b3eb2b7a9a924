"""hessbatch.convex: ABS/ABSA for L2-regularised logistic regression in NumPy/Numba.

Public surface (docs/convex.md is the user guide):

* data: :func:`load_mushroom` (UCI mushroom, checksum-verified, one-hot, seeded split),
  :func:`load_svmlight`, :func:`split_dataset`, :func:`check_arrays`, :class:`Dataset`;
* model: :class:`LogisticRegression` (loss, gradient, exact HVP, explicit Hessian, FGSM,
  top eigenvalue, Theorem 1's :class:`Constants`, F* by Newton's method);
* eigen-solver: :func:`top_eigenvalue` (power iteration or Lanczos on any matvec);
* drivers: :func:`train` runs any method with every decision taken from
  :class:`hessbatch.Scheduler`, and returns a :class:`RunResult` of per-update curves.
"""

# Exports, one module per line (the theory modules append theirs below).
from ._data import (MUSHROOM_LICENSE, MUSHROOM_SHA256, Dataset, check_arrays, load_mushroom,
                    load_svmlight, split_dataset)
from ._eigen import EigenResult, top_eigenvalue
from ._model import Constants, LogisticRegression, NewtonResult
from ._driver import SAMPLINGS, RunResult, full_batch_config, make_eigenvalue_fn, train

__all__ = [
    # data
    "MUSHROOM_LICENSE", "MUSHROOM_SHA256", "Dataset", "check_arrays", "load_mushroom",
    "load_svmlight", "split_dataset",
    # eigen-solver
    "EigenResult", "top_eigenvalue",
    # model
    "Constants", "LogisticRegression", "NewtonResult",
    # drivers
    "SAMPLINGS", "RunResult", "full_batch_config", "make_eigenvalue_fn", "train",
]

# Theorem 1 checks (theory engineer): exact least squares, many SGD runs in parallel, and the
# checks behind `hessbatch theory` (docs/theory.md).
from ._leastsq import LeastSquares, make_least_squares

# The Monte-Carlo kernel compiles with numba at import: loaded on first use (PEP 562), so that
# `hessbatch mushroom --backend numpy` never imports numba.
_LAZY = {"MonteCarloResult": "_montecarlo", "confidence_band": "_montecarlo",
         "one_sided_limits": "_montecarlo", "sgd_runs": "_montecarlo",
         "skewed_limits": "_montecarlo", "BalancedRow": "_sharp_logistic",
         "TheoryReport": "_theory_check", "least_squares_check": "_theory_check",
         "mushroom_check": "_theory_check", "second_order_prediction": "_theory_check",
         "sharp_logistic_check": "_theory_check", "ConstantsContradiction": "_theory_check"}

__all__ += ["LeastSquares", "make_least_squares", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
