"""A logistic-regression instance on which Theorem 1 is tight, with E[F(theta_t)] exactly.

The design (**ours**): ``N = 2 m`` copies of one data row ``x`` (a mushroom row), ``m`` labelled 1
and ``m`` labelled 0, L2 strength ``lam``. With ``z = x . theta`` and ``S = ||x||^2``::

    F(theta) = softplus(z) - z / 2 + lam/2 ||theta||^2            (every row has the same z)
    grad f_i(theta) - grad F(theta) = (1/2 - y_i) x                (at every theta)

so, exactly and with no estimate:

* ``theta* = 0`` and ``F* = log 2`` (``grad F(0) = (sigmoid(0) - 1/2) x = 0``);
* ``c = lam``, ``L = S/4 + lam`` (the Hessian ``sigmoid'(z) x x^T + lam I``, largest at ``z = 0``;
  computed by :meth:`LogisticRegression.constants`, the code every logistic check uses);
* the per-sample gradient variance is ``S Var(y_i) = S/4`` at *every* ``theta``: ``M = S/4`` and
  ``M_V = 0`` are valid and ``M`` cannot be lowered (it is attained everywhere). This is the only
  place where a constant smaller than :meth:`LogisticRegression.constants`'s ``max ||x_i||^2 = S``
  is used, and it is an identity, not an estimate.

From ``theta* = 0`` one update of ``b`` rows gives ``theta_1 = -alpha (1/2 - k/b) x``,
``k ~ Binomial(b, 1/2)`` the number of ones drawn, and ``E[F(theta_1)] - F* = alpha^2 S L / (8 b)``
to second order, which is the bound after one update, ``b eta0 c G = alpha^2 L M / (2 b)``: the
noise term is tight. Along a direction ``v`` orthogonal to ``x`` the loss is exactly
``lam/2 ||theta||^2`` (curvature ``c``): the rate term binds there.

Exact expectations: ``z`` follows a one-dimensional Markov chain,
``z+ = (1 - alpha lam) z - alpha (sigmoid(z) - k/b) S``, and the part of ``theta`` orthogonal
to ``x`` shrinks by ``1 - alpha lam`` per update whatever is drawn. ``E[F(theta_t)] - F*`` is
therefore a finite sum over the label counts ``k_0, ..., k_{t-1}`` (``prod (b_j + 1)`` terms),
computed by :meth:`BalancedRow.expected_gaps` with no sampling at all.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from hessbatch.theory import Constants

from ._leastsq import check_schedule

__all__ = ["BalancedRow", "balanced_row"]

# the exact enumeration holds at most this many label-count paths at once
MAX_PATHS = 2_000_000


def _softplus(z: np.ndarray) -> np.ndarray:
    return np.maximum(z, 0.0) + np.log1p(np.exp(-np.abs(z)))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


class BalancedRow:
    """``copies`` copies of the row ``x``, half labelled 1: exact constants and expected gaps.

    Args:
        x: ``(d,)`` a data row, not all zero.
        lam: L2 strength, > 0.
        copies: N, even, >= 2.

    Attributes:
        X, y: the ``(N, d)`` design and its labels (for :func:`sgd_runs`).
        model: the :class:`LogisticRegression` on ``X, y``.
        S: ``||x||^2``.
        theta_star, f_star: ``0`` and ``log 2``, exactly.

    Example:
        >>> p = BalancedRow(np.array([1.0, 1.0, 0.0]), lam=1.0)
        >>> k = p.constants()
        >>> k.L, k.c, k.M, k.M_V
        (1.5, 1.0, 0.5, 0.0)
        >>> g = p.expected_gaps([2], [0.1])          # one update of 2 rows from theta* = 0
        >>> bool(abs(g[1] / (0.1 ** 2 * k.L * k.M / 4) - 1) < 1e-3)   # alpha^2 L M / (2b)
        True
    """

    def __init__(self, x, lam: float, copies: int = 200):
        from . import LogisticRegression

        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 1 or x.size < 1 or not np.all(np.isfinite(x)) or not np.any(x):
            raise ValueError("x must be a finite, non-zero 1-d row")
        if isinstance(copies, bool) or not isinstance(copies, (int, np.integer)) or \
                copies < 2 or copies % 2:
            raise ValueError(f"copies must be an even int >= 2, got {copies!r}")
        self.x = x
        self.S = float(x @ x)
        self.X = np.tile(x, (int(copies), 1))
        self.y = np.repeat([1.0, 0.0], int(copies) // 2)
        self.model = LogisticRegression(self.X, self.y, lam)
        self.lam = self.model.lam
        self.dim = x.size
        self.theta_star = np.zeros(x.size)
        self.f_star = math.log(2.0)

    def constants(self) -> Constants:
        """``L`` and ``c`` from :meth:`LogisticRegression.constants`; ``M = S Var(y) = S/4``
        (the variance is that at every ``theta``), ``M_V = 0``."""
        k = self.model.constants()
        p = float(self.y.mean())
        return Constants(L=k.L, c=k.c, M=self.S * p * (1.0 - p), M_V=0.0)

    def loss(self, theta) -> float:
        theta = np.asarray(theta, dtype=np.float64)
        z = float(self.x @ theta)
        return float(_softplus(np.array(z)) - 0.5 * z + 0.5 * self.lam * theta @ theta)

    def orthogonal_direction(self) -> np.ndarray:
        """A unit vector orthogonal to ``x`` (the loss is ``lam/2 ||theta||^2`` along it)."""
        j = int(np.argmin(np.abs(self.x)))
        e = np.zeros(self.dim)
        e[j] = 1.0
        v = e - (self.x @ e) / self.S * self.x
        n = float(np.linalg.norm(v))
        if n < 1e-12:                                   # d = 1: no orthogonal direction
            raise ValueError("the row has no orthogonal direction (d = 1)")
        return v / n

    def expected_gaps(self, batch_sizes: Sequence[int], step_sizes: Sequence[float],
                      theta0=None) -> np.ndarray:
        """Exact ``E[F(theta_t)] - F*``, ``t = 0..T``, of SGD with i.i.d. mini-batches.

        A sum over every sequence of label counts, weighted by binomial probabilities.

        Raises:
            ValueError: lengths that differ, a batch < 1, or more than ``MAX_PATHS`` paths.
        """
        b, a = check_schedule(batch_sizes, step_sizes)
        paths = float(np.prod(b.astype(np.float64) + 1.0)) if b.size else 1.0
        if paths > MAX_PATHS:
            raise ValueError(f"batch_sizes: {paths:.3g} label-count paths exceed {MAX_PATHS}; "
                             f"use fewer updates or smaller batches")
        theta0 = np.zeros(self.dim) if theta0 is None else np.asarray(theta0, dtype=np.float64)
        z = np.array([float(self.x @ theta0)])
        perp2 = float(theta0 @ theta0) - z[0] ** 2 / self.S     # ||theta_perp||^2
        prob = np.ones(1)
        lam, S = self.lam, self.S

        def gap(z, prob, perp2):
            f = _softplus(z) - 0.5 * z + 0.5 * lam * (z * z / S + perp2)
            return float(prob @ f) - self.f_star

        out = [gap(z, prob, perp2)]
        for bt, at in zip(b.tolist(), a.tolist()):
            k = np.arange(bt + 1)
            pk = np.array([math.comb(bt, int(j)) for j in k], dtype=np.float64) / 2.0 ** bt
            z = ((1.0 - at * lam) * z[:, None]
                 - at * (_sigmoid(z)[:, None] - k[None, :] / bt) * S).ravel()
            prob = (prob[:, None] * pk[None, :]).ravel()
            perp2 *= (1.0 - at * lam) ** 2
            out.append(gap(z, prob, perp2))
        return np.array(out)


def balanced_row(seed: int = 0, row: int = 0, lam: float = 11.0, copies: int = 200) -> BalancedRow:
    """The balanced one-row instance built from training row ``row`` of
    :func:`load_mushroom(seed)` (22 ones, ``S = 22``: ``M = 5.5``, ``L = 5.5 + lam``)."""
    from . import load_mushroom

    ds = load_mushroom(seed=seed)
    return BalancedRow(ds.X_train[row], lam, copies)
