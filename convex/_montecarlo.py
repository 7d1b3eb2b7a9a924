"""Many independent SGD runs at once: a Numba kernel parallel over runs, and its NumPy twin.

``sgd_runs`` runs ``R`` independent copies of mini-batch SGD on one finite sum, every copy along
the same batch/step schedule, and returns the full training loss of every run at chosen update
counts. It is the Monte-Carlo half of the Theorem 1 checks (``hessbatch theory``): the mean
over runs estimates ``E[F(theta_t)]``, and its spread gives a confidence band.

Model (``kind``), with ``z = x_i . theta`` and the same ridge term in every ``f_i``::

    logistic:       f_i = log(1 + exp(z)) - y_i z + lam/2 ||theta||^2,   y_i in {0, 1}
    least_squares:  f_i = 1/2 (z - y_i)^2 + lam/2 ||theta||^2

Update ``t`` draws ``b_t`` indices uniformly *with replacement* (Theorem 1's sampling) and sets
``theta <- theta - alpha_t ((1/b_t) sum_j grad f_{i_j}(theta))``.

Random numbers, fixed so that every backend draws the same indices bit for bit: run ``r`` has
the key ``k_r = mix(mix(seed) + r)`` and its ``j``-th draw (``j = 1, 2, ...``, counted over all
updates) is ``u = mix(k_r + j * 0x9E3779B97F4A7C15)``, the SplitMix64 output function ``mix``
applied to a counter; the index is ``floor((u >> 11) * 2^-53 * N)``. A run's numbers therefore do
not depend on the number of threads or on which other runs are computed: the same seed draws
the same indices on any machine, and gives the same losses on one machine (BLAS and compiled
kernels may round differently on another CPU).

Backends:

* ``"numba"``: the compiled kernel, ``prange`` over runs. Rows are stored as fixed-width lists
  of their non-zeros (``_pack``: the mushroom data has 22 non-zeros, all ones, in 117 columns
  per row, so a row is 22 two-byte column numbers and the whole data set fits in L2 cache).
* ``"numba-serial"``: the same kernel compiled without ``parallel`` (one thread).
* ``"numpy"``: the reference, vectorised over runs (a loop over updates; the runs' mini-batches
  are gathered into one array per update, in chunks that bound memory). The tests check the
  compiled kernel against it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ._jit import njit, numba  # njit: cached where a cache folder can be written

__all__ = ["MonteCarloResult", "sgd_runs", "confidence_band", "one_sided_limits", "skewed_limits",
           "run_keys",
           "draw_indices"]

KINDS = {"logistic": 0, "least_squares": 1}
BACKENDS = ("numba", "numba-serial", "numpy")

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_ONE = np.uint64(1)
_TWO_M53 = 2.0 ** -53


# --------------------------------------------------------------------------------------------
# random numbers (NumPy side; the kernel inlines the same arithmetic)


def _mix_np(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = (z ^ (z >> _S30)) * _M1
        z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


def run_keys(seed: int, runs: int, first_run: int = 0) -> np.ndarray:
    """The per-run keys ``k_r = mix(mix(seed) + r)``, ``r = first_run .. first_run + runs - 1``.

    Raises:
        TypeError, ValueError: a seed that is not an int in ``[0, 2^64)``.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {seed!r} ({type(seed).__name__})")
    if not 0 <= int(seed) < 2 ** 64:
        raise ValueError(f"seed must be in [0, 2^64), got {seed}")
    base = _mix_np(np.array([seed], dtype=np.uint64))
    r = np.arange(first_run, first_run + runs, dtype=np.uint64)
    with np.errstate(over="ignore"):
        return _mix_np(base + r)


def draw_indices(keys: np.ndarray, start: int, count: int, n: int) -> np.ndarray:
    """Draws ``start+1 .. start+count`` of every run's stream as indices in ``[0, n)``.

    Returns:
        ``(len(keys), count)`` int64 array.
    """
    j = np.arange(start + 1, start + count + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        u = _mix_np(keys[:, None] + j[None, :] * _GOLDEN)
    return ((u >> _S11).astype(np.float64) * _TWO_M53 * n).astype(np.int64)


# --------------------------------------------------------------------------------------------
# the compiled kernel: plain functions compiled in one place, a parallel driver and a serial
# twin over the same per-run function (so the two cannot drift apart)


@njit(cache=True, inline="always")
def _mix(z):
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@njit(cache=True, inline="always")
def _sample_loss(z, target, kind):
    if kind == 0:
        # log(1 + e^z) - y z without overflow for large |z|
        return max(z, 0.0) + math.log1p(math.exp(-abs(z))) - target * z
    d = z - target
    return 0.5 * d * d


@njit(cache=True, inline="always")
def _sample_slope(z, target, kind):
    """d f_i / d z: sigmoid(z) - y (logistic) or z - y (least squares)."""
    if kind == 0:
        # sigmoid(z) = 1 / (1 + e) for z >= 0 and e / (1 + e) for z < 0, e = exp(-|z|): one
        # exp, one division and a select instead of a branch the CPU mispredicts half the time
        e = math.exp(-abs(z))
        s = 1.0 / (1.0 + e)
        return (s if z >= 0.0 else e * s) - target
    return z - target


@njit(cache=True, inline="always")
def _row_dot(idx, val, theta, i):
    """x_i . theta over row i's stored entries. Two accumulators halve the floating point
    dependency chain; their order is fixed, so the result is the same on every machine. An
    empty ``val`` means binary data: every stored entry is 1."""
    w = idx.shape[1]
    z0 = 0.0
    z1 = 0.0
    p = 0
    if val.shape[0] == 0:
        while p + 2 <= w:
            z0 += theta[idx[i, p]]
            z1 += theta[idx[i, p + 1]]
            p += 2
        if p < w:
            z0 += theta[idx[i, p]]
    else:
        while p + 2 <= w:
            z0 += val[i, p] * theta[idx[i, p]]
            z1 += val[i, p + 1] * theta[idx[i, p + 1]]
            p += 2
        if p < w:
            z0 += val[i, p] * theta[idx[i, p]]
    return z0 + z1


@njit(cache=True, inline="always")
def _row_scatter(idx, val, grad, i, g):
    """grad += g * x_i over row i's stored entries."""
    w = idx.shape[1]
    if val.shape[0] == 0:
        for p in range(w):
            grad[idx[i, p]] += g
    else:
        for p in range(w):
            grad[idx[i, p]] += g * val[i, p]


@njit(cache=True)
def _one_run(data, lam, kind, theta0, schedule, key, snaps, theta_out, avg_out):
    """One SGD run; copies the parameters at every checkpoint into ``snaps`` (C, d), the
    final ones into ``theta_out`` and their average over updates 1..T into ``avg_out``.
    data = (idx, val, y): padded rows (see ``_pack``) and targets; schedule = (batch sizes,
    step sizes, checkpoints as sorted update counts).

    The full loss at the checkpoints is computed afterwards for all runs at once, as one dense
    matrix product (BLAS) per chunk of runs: per row, that is several times cheaper than a
    sparse dot product followed by a scalar log1p(exp()) in here."""
    idx, val, y = data
    batch, step, checkpoints = schedule
    n = y.shape[0]
    d = theta0.shape[0]
    n_check = checkpoints.shape[0]
    # one extra slot, always 0, that padding entries of short rows point to
    theta = np.zeros(d + 1)
    grad = np.zeros(d + 1)
    for k in range(d):
        theta[k] = theta0[k]
        avg_out[k] = 0.0
    widest = 1
    for t in range(batch.shape[0]):
        widest = max(widest, batch[t])
    rows = np.empty(widest, np.int64)
    slopes = np.empty(widest)
    counter = np.uint64(0)
    c = 0
    while c < n_check and checkpoints[c] == 0:
        for k in range(d):
            snaps[c, k] = theta[k]
        c += 1
    for t in range(batch.shape[0]):
        b = batch[t]
        # two passes over the batch: the b dot products are independent of each other (the
        # CPU overlaps them), and only then the scatter-adds into the gradient
        for j in range(b):
            counter += _ONE
            u = _mix(key + counter * _GOLDEN)
            i = int(np.float64(u >> _S11) * _TWO_M53 * n)
            rows[j] = i
            slopes[j] = _sample_slope(_row_dot(idx, val, theta, i), y[i], kind)
        for k in range(d):
            grad[k] = 0.0
        for j in range(b):
            _row_scatter(idx, val, grad, rows[j], slopes[j])
        a = step[t]
        inv_b = 1.0 / b
        for k in range(d):
            theta[k] -= a * (grad[k] * inv_b + lam * theta[k])
            avg_out[k] += theta[k]
        while c < n_check and checkpoints[c] == t + 1:
            for k in range(d):
                snaps[c, k] = theta[k]
            c += 1
    T = batch.shape[0]
    for k in range(d):
        theta_out[k] = theta[k]
        avg_out[k] = avg_out[k] / T if T > 0 else theta0[k]


@njit(cache=True, parallel=True)
def _runs_parallel(data, lam, kind, theta0, schedule, keys, snaps, thetas, avgs):
    for r in numba.prange(keys.shape[0]):
        _one_run(data, lam, kind, theta0, schedule, keys[r], snaps[r], thetas[r], avgs[r])


@njit(cache=True)
def _runs_serial(data, lam, kind, theta0, schedule, keys, snaps, thetas, avgs):
    for r in range(keys.shape[0]):
        _one_run(data, lam, kind, theta0, schedule, keys[r], snaps[r], thetas[r], avgs[r])


def _pack(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows as fixed-width lists of (column, value) of their non-zeros (ELL format).

    Every row is padded to the widest row with column ``d`` (a slot the kernel keeps at 0) and
    value 0. Columns are ``uint16`` when ``d < 65535`` (the mushroom rows, 22 columns of 2
    bytes, then fit in a core's L2 cache), else ``int32``. When every non-zero is 1 (one-hot
    data) the values are not stored at all: an empty ``(0, w)`` array says so.
    """
    n, d = X.shape
    mask = X != 0
    counts = mask.sum(axis=1)
    w = max(int(counts.max(initial=0)), 1)
    dtype = np.uint16 if d < 65535 else np.int32
    idx = np.full((n, w), d, dtype=dtype)
    val = np.zeros((n, w))
    rows, cols = np.nonzero(mask)
    slot = np.arange(rows.size) - np.repeat(np.cumsum(counts) - counts, counts)
    idx[rows, slot] = cols
    val[rows, slot] = X[rows, cols]
    if np.all(X[mask] == 1.0):
        val = np.zeros((0, w))
    return idx, val


# --------------------------------------------------------------------------------------------
# the NumPy reference


def _slope_np(z: np.ndarray, target: np.ndarray, kind: int) -> np.ndarray:
    if kind == 0:
        e = np.exp(-np.abs(z))
        s = 1.0 / (1.0 + e)
        return np.where(z >= 0, s, e * s) - target
    return z - target


def _loss_np(z: np.ndarray, target: np.ndarray, kind: int) -> np.ndarray:
    if kind == 0:
        out = np.logaddexp(0.0, z)          # log(1 + e^z) without overflow
        out -= target * z
        return out
    out = z - target
    out *= out
    out *= 0.5
    return out


def _full_loss_np(X, y, lam, kind, thetas):
    """F(theta) for every row of ``thetas``: one dense product for all of them (BLAS)."""
    z = X @ thetas.T                                              # (N, runs)
    return _loss_np(z, y[:, None], kind).mean(axis=0) + 0.5 * lam * np.sum(thetas ** 2, axis=1)


def _runs_numpy(X, y, lam, kind, theta0, batch, step, checkpoints, keys, losses, thetas,
                avgs):
    n, d = X.shape
    # runs per chunk: keep the gathered mini-batches (chunk x b x d) near 16 MB
    chunk = max(1, int(2_000_000 // (max(int(batch.max(initial=1)), 1) * d)))
    for start in range(0, keys.shape[0], chunk):
        k = keys[start:start + chunk]
        theta = np.tile(theta0, (k.shape[0], 1))
        acc = np.zeros_like(theta)
        out = losses[start:start + chunk]
        counter, c = 0, 0
        while c < checkpoints.size and checkpoints[c] == 0:
            out[:, c] = _full_loss_np(X, y, lam, kind, theta)
            c += 1
        for t in range(batch.size):
            b = int(batch[t])
            idx = draw_indices(k, counter, b, n)
            counter += b
            xb = X[idx]                                            # (runs, b, d)
            g = _slope_np(np.einsum("rbd,rd->rb", xb, theta), y[idx], kind)
            grad = np.einsum("rb,rbd->rd", g, xb)
            theta -= step[t] * (grad * (1.0 / b) + lam * theta)
            acc += theta
            while c < checkpoints.size and checkpoints[c] == t + 1:
                out[:, c] = _full_loss_np(X, y, lam, kind, theta)
                c += 1
        thetas[start:start + chunk] = theta
        avgs[start:start + chunk] = acc / batch.size if batch.size else theta


# --------------------------------------------------------------------------------------------
# the public driver


@dataclass(frozen=True)
class MonteCarloResult:
    """What :func:`sgd_runs` returns.

    Fields:
        losses: ``(R, C)`` full training loss ``F(theta)`` of every run at every checkpoint.
        thetas: ``(R, d)`` final parameters of every run.
        checkpoints: ``(C,)`` update counts at which the losses were taken.
        samples: ``(C,)`` samples drawn by each run before each checkpoint.
        averages: ``(R, d)`` each run's parameters averaged over updates ``1..T`` (the
            Polyak-Ruppert average; ``theta0`` when ``T = 0``): a first moment whose mean over
            runs can be compared with an exact ``mean_t E[theta_t]``, far less noisy than the
            final parameters because it averages along the run.
    """

    losses: np.ndarray
    thetas: np.ndarray
    checkpoints: np.ndarray
    samples: np.ndarray
    averages: np.ndarray

    def gaps(self, f_star: float) -> np.ndarray:
        """``losses - f_star``: the optimality gaps ``F(theta) - F*``."""
        return self.losses - float(f_star)


def _int_array(name: str, value, low: int) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-d, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not (np.issubdtype(arr.dtype, np.floating) and np.all(arr == np.round(arr))):
            raise TypeError(f"{name} must hold ints, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and arr.min() < low:
        raise ValueError(f"{name} must be >= {low}, got {int(arr.min())} at index "
                         f"{int(np.argmin(arr))}")
    return arr


def _check_labels(y: np.ndarray, kind: str) -> None:
    """Logistic targets are labels: 0 or 1 (a separate function so that a mutation test can
    feed the kernel shifted targets, i.e. a biased gradient, without editing it)."""
    if kind == "logistic" and not np.all((y == 0) | (y == 1)):
        bad = float(y[(y != 0) & (y != 1)][0])
        raise ValueError(f"y must be 0 or 1 for kind='logistic', got {bad!r}")


def sgd_runs(X, y, *, batch_sizes: Sequence[int], step_sizes: Sequence[float], lam: float,
             kind: str = "logistic", runs: int = 1000, seed: int = 0, theta0=None,
             checkpoints: Sequence[int] | None = None, backend: str = "numba",
             threads: int | None = None, first_run: int = 0) -> MonteCarloResult:
    """``runs`` independent runs of mini-batch SGD with i.i.d. sampling, full loss at checkpoints.

    Every run follows the same schedule: update ``t`` draws ``b_t`` indices uniformly with
    replacement and steps ``theta -= alpha_t * ((1/b_t) sum_j grad f_{i_j}(theta))`` (the ridge
    term ``lam theta`` is part of every ``grad f_i``). Run ``r`` uses its own random stream
    (module docstring), so the result is the same on any backend and thread count, up to
    floating point rounding between backends.

    Args:
        X: ``(N, d)`` features, finite.
        y: ``(N,)`` targets; in ``{0, 1}`` for ``kind="logistic"``.
        batch_sizes: ``b_0..b_{T-1}``, ints >= 1.
        step_sizes: ``alpha_0..alpha_{T-1}``, finite and >= 0 (Theorem 1: ``b_t * eta0``).
        lam: ridge parameter, >= 0.
        kind: ``"logistic"`` or ``"least_squares"``.
        runs: R >= 1.
        seed: int in ``[0, 2^64)``.
        theta0: ``(d,)`` common start (default zeros).
        checkpoints: strictly increasing update counts in ``[0, T]`` (default ``[0, T]``).
        backend: ``"numba"`` (parallel over runs), ``"numba-serial"`` or ``"numpy"``.
        threads: Numba threads for ``"numba"`` (default: Numba's setting).
        first_run: index of the first run; ``runs=100, first_run=100`` computes exactly runs
            100..199 of a larger experiment with the same seed (for progress in chunks).

    Returns:
        :class:`MonteCarloResult`.

    Raises:
        TypeError, ValueError: any argument of the wrong type, shape or range, named.

    Example:
        >>> X = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]); y = np.array([0.0, 1.0, 1.0])
        >>> res = sgd_runs(X, y, batch_sizes=[2] * 50, step_sizes=[0.5] * 50, lam=0.1,
        ...                runs=100, seed=0, checkpoints=[0, 50])
        >>> res.losses.shape, bool(np.all(res.losses[:, 1] < res.losses[:, 0]))
        ((100, 2), True)
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    X = np.asarray(X)
    if X.dtype == object or not np.issubdtype(X.dtype, np.number):
        raise TypeError(f"X must be a real numeric array, got dtype {X.dtype}")
    X = np.ascontiguousarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] < 1 or X.shape[1] < 1:
        raise ValueError(f"X must be a non-empty 2-d array (N, d), got shape {X.shape}")
    if not np.all(np.isfinite(X)):
        raise ValueError("X must be finite; it holds NaN or infinity")
    n, d = X.shape
    y = np.asarray(y, dtype=np.float64)
    if y.shape != (n,):
        raise ValueError(f"y must have shape ({n},) to match X, got {y.shape}")
    if not np.all(np.isfinite(y)):
        raise ValueError("y must be finite; it holds NaN or infinity")
    _check_labels(y, kind)
    if isinstance(lam, bool) or not isinstance(lam, (int, float, np.floating, np.integer)):
        raise TypeError(f"lam must be a real number, got {lam!r}")
    lam = float(lam)
    if not math.isfinite(lam) or lam < 0:
        raise ValueError(f"lam must be finite and >= 0, got {lam!r}")
    batch = _int_array("batch_sizes", batch_sizes, 1)
    step = np.asarray(step_sizes, dtype=np.float64)
    if step.shape != batch.shape:
        raise ValueError(f"step_sizes must have the length of batch_sizes ({batch.size}), got "
                         f"shape {step.shape}")
    if not np.all(np.isfinite(step)) or (step.size and step.min() < 0):
        raise ValueError("step_sizes must be finite and >= 0")
    T = batch.size
    check = np.unique([0, T]) if checkpoints is None else _int_array("checkpoints",
                                                                    checkpoints, 0)
    if check.size == 0 or check.max() > T or np.any(np.diff(check) <= 0):
        raise ValueError(f"checkpoints must be a non-empty, strictly increasing list of update "
                         f"counts in [0, {T}], got {check[:10].tolist()}")
    if isinstance(runs, bool) or not isinstance(runs, (int, np.integer)):
        raise TypeError(f"runs must be an int, got {runs!r}")
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    theta0 = np.zeros(d) if theta0 is None else np.asarray(theta0, dtype=np.float64)
    if theta0.shape != (d,) or not np.all(np.isfinite(theta0)):
        raise ValueError(f"theta0 must be a finite array of shape ({d},), got {theta0.shape}")
    if isinstance(first_run, bool) or not isinstance(first_run, (int, np.integer)) or \
            first_run < 0:
        raise ValueError(f"first_run must be an int >= 0, got {first_run!r}")
    keys = run_keys(seed, int(runs), int(first_run))
    losses = np.empty((int(runs), check.size))
    thetas = np.empty((int(runs), d))
    avgs = np.empty((int(runs), d))
    if backend == "numpy":
        _runs_numpy(X, y, lam, KINDS[kind], theta0, batch, step, check, keys, losses, thetas,
                    avgs)
    else:
        idx, val = _pack(X)
        data = (idx, val, y)
        fn = _runs_parallel if backend == "numba" else _runs_serial
        old = numba.get_num_threads()
        if threads is not None:
            if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or \
                    not 1 <= threads <= numba.config.NUMBA_NUM_THREADS:
                raise ValueError(f"threads must be an int in [1, "
                                 f"{numba.config.NUMBA_NUM_THREADS}], got {threads!r}")
            numba.set_num_threads(int(threads))
        try:
            # parameters at the checkpoints, in chunks of runs that bound the memory
            # (the loss pass holds an N x (runs x checkpoints) matrix: keep it near 16 MB)
            chunk = max(1, int(2_000_000 // (check.size * n)))
            for start in range(0, int(runs), chunk):
                k = keys[start:start + chunk]
                snaps = np.empty((k.shape[0], check.size, d))
                fn(data, lam, KINDS[kind], theta0, (batch, step, check), k, snaps,
                   thetas[start:start + chunk], avgs[start:start + chunk])
                losses[start:start + chunk] = _full_loss_np(
                    X, y, lam, KINDS[kind], snaps.reshape(-1, d)).reshape(k.shape[0], -1)
        finally:
            numba.set_num_threads(old)
    cum = np.concatenate(([0], np.cumsum(batch)))
    return MonteCarloResult(losses=losses, thetas=thetas, checkpoints=check, samples=cum[check],
                            averages=avgs)


def confidence_band(values, confidence: float = 0.99):
    """Mean over runs and its normal-approximation confidence interval, per column.

    ``mean +- z * sd / sqrt(R)`` with ``z`` the two-sided normal quantile of ``confidence``
    (the central limit theorem; R should be in the hundreds at least).

    Args:
        values: ``(R, C)`` array, R >= 2.
        confidence: in (0, 1).

    Returns:
        ``(mean, lower, upper, sd)``, each of shape ``(C,)``.

    Example:
        >>> mean, lo, hi, sd = confidence_band(np.array([[0.0], [2.0]]), 0.95)
        >>> float(mean[0]), round(float(hi[0] - mean[0]), 4)
        (1.0, 1.96)
    """
    from statistics import NormalDist

    return _limits(values, "confidence", confidence,
                   lambda _runs: NormalDist().inv_cdf(0.5 + confidence / 2))


def _limits(values, name: str, level: float, quantile):
    """``(mean, mean - q sd/sqrt(R), mean + q sd/sqrt(R), sd)`` per column, ``q = quantile(R)``."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] < 2:
        raise ValueError(f"values must be (R, C) with R >= 2 runs, got shape {values.shape}")
    if not 0 < level < 1:
        raise ValueError(f"{name} must be in (0, 1), got {level!r}")
    q = quantile(values.shape[0])
    mean = values.mean(axis=0)
    sd = values.std(axis=0, ddof=1)
    half = q * sd / math.sqrt(values.shape[0])
    return mean, mean - half, mean + half, sd


def one_sided_limits(values, level: float = 0.999):
    """Mean over runs with one-sided Student-t confidence limits at ``level``, per column.

    ``lower = mean - t sd / sqrt(R)`` and ``upper = mean + t sd / sqrt(R)``, ``t`` the
    ``level``-quantile of Student's t with ``R - 1`` degrees of freedom
    (:func:`hessbatch.theory.t_quantile`). Each limit alone holds with probability ``level``
    (for normal data exactly, otherwise by the central limit theorem): a one-sided test of
    "the mean exceeds the bound" uses ``lower`` alone. A column with no spread (every run
    equal, e.g. at the start) gets ``lower = upper = mean``.

    Args:
        values: ``(R, C)`` array, R >= 2, finite or not (a non-finite column gives NaN limits).
        level: in (0, 1).

    Returns:
        ``(mean, lower, upper, sd)``, each of shape ``(C,)``.

    Example:
        >>> mean, lo, hi, sd = one_sided_limits(np.array([[0.0], [2.0]]), 0.95)
        >>> float(mean[0]), round(float(hi[0] - mean[0]), 4)    # t(0.95, 1) = 6.3138
        (1.0, 6.3138)
    """
    from hessbatch.theory import t_quantile

    return _limits(values, "level", level, lambda runs: t_quantile(level, runs - 1))


def skewed_limits(values, level: float = 0.999):
    """Mean over runs with one-sided limits at ``level`` corrected for skewness, per column.

    For right-skewed values (optimality gaps) the t statistic is left-skewed, so the plain
    ``mean + t sd/sqrt(R)`` upper limit is too low (anti-conservative) and the lower limit too
    low as well (conservative). The first Edgeworth term of the studentised mean (Hall 1992,
    section 3.5) moves both: with ``g`` the sample skewness and ``k = g (2 t^2 + 1) / (6 sqrt(R))``,

        upper = mean + (t + k) sd / sqrt(R),    lower = mean - (t - k) sd / sqrt(R)

    (``t`` the Student-t quantile at ``R - 1`` degrees of freedom). This is what a two-sided
    agreement test uses (is the exact value inside?). The check "the mean exceeds the bound"
    keeps :func:`one_sided_limits`' lower limit, which is the conservative one for such data.
    ``benchmarks/theory_false_fail.py`` measures both on gaps whose mean is known exactly.

    Returns:
        ``(mean, lower, upper, sd)``, each of shape ``(C,)``.

    Example:
        >>> x = np.array([[0.0], [0.0], [0.0], [4.0]])          # right-skewed
        >>> m, lo, hi, sd = skewed_limits(x, 0.9)
        >>> m0, lo0, hi0, _ = one_sided_limits(x, 0.9)
        >>> bool(hi[0] > hi0[0] and lo[0] > lo0[0])
        True
    """
    from hessbatch.theory import t_quantile

    values = np.asarray(values, dtype=np.float64)
    mean, lo, hi, sd = _limits(values, "level", level,
                               lambda runs: t_quantile(level, runs - 1))
    R = values.shape[0]
    t = t_quantile(level, R - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        dev = values - mean
        m2 = np.mean(dev ** 2, axis=0)
        g = np.where(m2 > 0, np.mean(dev ** 3, axis=0) / np.where(m2 > 0, m2, 1.0) ** 1.5, 0.0)
    k = g * (2.0 * t * t + 1.0) / (6.0 * math.sqrt(R))
    se = sd / math.sqrt(R)
    return mean, mean - (t - k) * se, mean + (t + k) * se, sd
