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
from ._montecarlo import (MonteCarloResult, confidence_band, one_sided_limits, sgd_runs,
                          skewed_limits)
from ._sharp_logistic import BalancedRow
from ._theory_check import (TheoryReport, least_squares_check, mushroom_check,
                            second_order_prediction, sharp_logistic_check)

__all__ += [
    "LeastSquares", "make_least_squares",
    "MonteCarloResult", "confidence_band", "one_sided_limits", "sgd_runs", "skewed_limits",
    "BalancedRow",
    "TheoryReport", "least_squares_check", "mushroom_check", "second_order_prediction",
    "sharp_logistic_check",
]
