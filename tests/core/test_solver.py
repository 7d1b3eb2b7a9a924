"""The core solver (hessbatch._solver): standard library only, exact checks on explicit
matrices, the tridiagonal eigenproblem against a brute-force characteristic polynomial."""

import math
import random
import subprocess
import sys

import pytest

from hessbatch import _solver


class ListOps:
    """Vector ops on Python lists for an explicit symmetric matrix (no NumPy anywhere)."""

    def __init__(self, a):
        self.a, self.dim, self.n = a, len(a), 0

    def matvec(self, v):
        self.n += 1
        return [sum(r * x for r, x in zip(row, v)) for row in self.a]

    def dot(self, u, v):
        return math.fsum(x * y for x, y in zip(u, v))

    def axpy(self, a, x, y):
        return [a * p + q for p, q in zip(x, y)]

    def scale(self, a, x):
        return [a * p for p in x]

    def norm(self, v):
        return math.sqrt(self.dot(v, v))

    def random(self, seed):
        rng = random.Random(seed)
        return [rng.gauss(0, 1) for _ in range(self.dim)]


def _orthogonal(d, seed):
    """A random orthogonal matrix by Gram-Schmidt (rows)."""
    rng = random.Random(seed)
    q = []
    for _ in range(d):
        v = [rng.gauss(0, 1) for _ in range(d)]
        for u in q:
            c = sum(a * b for a, b in zip(u, v))
            v = [a - c * b for a, b in zip(v, u)]
        n = math.sqrt(sum(a * a for a in v))
        q.append([a / n for a in v])
    return q


def _matrix(eigs, seed=0):
    q = _orthogonal(len(eigs), seed)
    d = len(eigs)
    return [[sum(q[k][i] * eigs[k] * q[k][j] for k in range(d)) for j in range(d)]
            for i in range(d)], q


def test_core_solver_imports_no_numpy():
    code = ("import sys, hessbatch._solver; "
            "assert not {'numpy', 'torch'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("n", [1, 2, 3, 6, 12])
def test_tridiagonal_eigenvalues_are_roots_of_the_characteristic_polynomial(n):
    rng = random.Random(n)
    a = [rng.uniform(-3, 3) for _ in range(n)]
    b = [rng.uniform(-1, 1) for _ in range(n - 1)]
    ev = _solver.tridiagonal_eigenvalues(a, b)
    assert ev == sorted(ev) and len(ev) == n
    # the trace and the sum of squares (trace of T^2) are exact invariants
    assert abs(sum(ev) - sum(a)) <= 1e-12 * n * 3
    assert abs(sum(e * e for e in ev) - (sum(x * x for x in a) + 2 * sum(x * x for x in b))) \
        <= 1e-11 * n * 9

    def charpoly(x):  # det(T - x I) by the three-term recurrence
        p0, p1 = 1.0, a[0] - x
        for i in range(1, n):
            p0, p1 = p1, (a[i] - x) * p1 - b[i - 1] ** 2 * p0
        return p1

    for e in ev:  # a sign change of det(T - xI) brackets each simple root
        h = 1e-9 * (1 + abs(e))
        assert charpoly(e - h) * charpoly(e + h) <= 0
    theta, s = _solver.tridiagonal_top(a, b)
    assert theta == pytest.approx(ev[-1], abs=1e-13)
    ts = [a[i] * s[i] + (b[i - 1] * s[i - 1] if i else 0) + (b[i] * s[i + 1] if i < n - 1 else 0)
          for i in range(n)]
    assert math.sqrt(sum((t - theta * x) ** 2 for t, x in zip(ts, s))) <= 1e-12 * 4
    assert abs(math.sqrt(sum(x * x for x in s)) - 1) <= 1e-12


def test_tridiagonal_rejects_bad_input():
    with pytest.raises(ValueError, match="off-diagonal"):
        _solver.tridiagonal_eigenvalues([1.0, 2.0], [])
    with pytest.raises(ValueError, match="at least one"):
        _solver.tridiagonal_top([], [])
    with pytest.raises(ValueError, match="non-finite"):
        _solver.tridiagonal_eigenvalues([1.0, math.nan], [0.5])


@pytest.mark.parametrize("rule", ["squared", "linear"])
def test_lanczos_on_an_explicit_matrix(rule):
    eigs = [5.0, 4.8, 2.0, 1.0, 0.5, -1.0, -3.0, 0.1]
    a, q = _matrix(eigs)
    ops = ListOps(a)
    r = _solver.lanczos(ops, _solver.start_vector(ops, 3), max_iter=8, tol=1e-12, rule=rule)
    assert r.converged and abs(r.value - 5.0) <= 1e-10
    assert r.n_matvec == ops.n <= 8
    assert [round(x, 8) for x in r.ritz_values] == sorted(eigs, reverse=True) or r.n_matvec < 8
    # the vector is the top eigenvector (up to sign)
    assert abs(abs(ops.dot(r.vector, q[0])) - 1) <= 1e-8
    # a budget too small is reported
    ops2 = ListOps(a)
    r2 = _solver.lanczos(ops2, _solver.start_vector(ops2, 3), max_iter=2, tol=1e-12, rule=rule)
    assert not r2.converged and r2.n_matvec == 2 and r2.value < 5.0


def test_power_iteration_on_an_explicit_matrix():
    a, q = _matrix([3.0, 1.0, 0.5, 0.2])
    ops = ListOps(a)
    r = _solver.power_iteration(ops, _solver.start_vector(ops, 1), max_iter=200, tol=1e-13)
    assert r.converged and abs(r.value - 3.0) <= 1e-10
    hv = ops.matvec(r.vector)   # value is the Rayleigh quotient of the returned vector
    assert abs(ops.dot(r.vector, hv) - r.value) <= 1e-12
    assert r.ritz_values == ()


def test_warm_start_from_the_eigenvector_converges_at_once_and_finds_a_new_top():
    eigs = [5.0, 4.0, 2.0, 1.0, 0.5, 0.25, 0.1, 0.0, -0.5, -1.0]
    a, q = _matrix(eigs, seed=4)
    cold = ListOps(a)
    rc = _solver.lanczos(cold, _solver.start_vector(cold, 0), max_iter=10, tol=1e-3)
    warm = ListOps(a)
    v0 = _solver.start_vector(warm, 0, warm=q[0], mix=1e-4)
    rw = _solver.lanczos(warm, v0, max_iter=10, tol=1e-3)
    assert abs(rw.value - 5.0) <= 1e-6 and rw.converged
    assert rw.n_matvec < rc.n_matvec
    # warm from the *second* eigenvector: the random part lets the top one be found
    new = ListOps(a)
    v1 = _solver.start_vector(new, 0, warm=q[1], mix=0.1)
    rn = _solver.lanczos(new, v1, max_iter=10, tol=1e-6)
    assert abs(rn.value - 5.0) <= 1e-8
    # mix = 0 cannot: the Krylov space of an eigenvector is that eigenvector
    stuck = ListOps(a)
    rs = _solver.lanczos(stuck, _solver.start_vector(stuck, 0, warm=q[1], mix=0.0),
                         max_iter=10, tol=1e-6)
    assert abs(rs.value - 4.0) <= 1e-8 and rs.n_matvec == 1


def test_start_vector_is_unit_and_rejects_bad_input():
    ops = ListOps([[1.0, 0.0], [0.0, 2.0]])
    for warm in (None, [3.0, 4.0]):
        v = _solver.start_vector(ops, 5, warm=warm, mix=0.1)
        assert abs(ops.norm(v) - 1) <= 1e-15
    assert _solver.start_vector(ops, 5) == _solver.start_vector(ops, 5)
    with pytest.raises(ValueError, match="warm_mix must be a finite number >= 0, got -1"):
        _solver.start_vector(ops, 0, warm=[1.0, 0.0], mix=-1)
    with pytest.raises(ValueError, match="non-zero"):
        _solver.start_vector(ops, 0, warm=[0.0, 0.0])
    with pytest.raises(ValueError, match="rule must be one of"):
        _solver.lanczos(ops, [1.0, 0.0], max_iter=2, tol=0.1, rule="cubic")
    with pytest.raises(ValueError, match="max_iter must be an int >= 1"):
        _solver.power_iteration(ops, [1.0, 0.0], max_iter=0, tol=0.1)


def test_non_finite_product_is_an_error_naming_it():
    class Bad(ListOps):
        def matvec(self, v):
            return [math.nan] * self.dim
    ops = Bad([[1.0, 0.0], [0.0, 1.0]])
    for solve in (_solver.lanczos, _solver.power_iteration):
        with pytest.raises(ValueError, match="non-finite"):
            solve(ops, [1.0, 0.0], max_iter=3, tol=0.1)


# ------------------------------------------------------------------------------------------
# the decision threshold (issue 22): stop as soon as "no drop" is certain

def _random_spectrum(rng, d):
    top = rng.uniform(1.0, 10.0)
    return [top] + [top * rng.uniform(-0.5, 0.97) for _ in range(d - 1)]


@pytest.mark.parametrize("solver", ["lanczos", "power"])
def test_threshold_stops_only_when_no_drop_is_certain(solver):
    """Over 60 random symmetric matrices and thresholds on both sides of lambda_1: a result
    marked lower_bound is strictly above the threshold and at most lambda_1 (so the answer
    "lambda_1 > threshold" is right every time); any other result is bit for bit the run
    without a threshold (the normal rule ran)."""
    rng = random.Random(22)
    early = 0
    for case in range(60):
        d = rng.randint(3, 9)
        eigs = _random_spectrum(rng, d)
        lam1 = max(eigs)
        a, _ = _matrix(eigs, seed=case)
        thr = lam1 * rng.choice([0.2, 0.5, 0.9, 0.999, 1.0, 1.5])
        solve = getattr(_solver, "lanczos" if solver == "lanczos" else "power_iteration")
        kw = dict(max_iter=12, tol=1e-6)
        plain_ops, ops = ListOps(a), ListOps(a)
        plain = solve(plain_ops, _solver.start_vector(plain_ops, 1000 + case), **kw)
        r = solve(ops, _solver.start_vector(ops, 1000 + case), threshold=thr, **kw)
        assert r.threshold == thr and r.n_matvec == ops.n
        if r.lower_bound:
            early += 1
            assert r.value > thr and r.value <= lam1 * (1 + 1e-12)
            assert not r.converged and r.status == "lower_bound"
            assert r.n_matvec <= plain.n_matvec
            # it stopped at the first estimate above the threshold, not later
            assert all(h <= thr for h in r.history[:-1])
        else:
            assert (r.value, r.n_matvec, r.history, r.converged) == \
                (plain.value, plain.n_matvec, plain.history, plain.converged)
            assert all(h <= thr for h in r.history) or r.converged
        if thr >= lam1:      # nothing can be above a threshold at or above lambda_1
            assert not r.lower_bound
    assert early >= 15       # the early stop did happen, often


def test_threshold_saves_products_on_a_no_drop_check():
    eigs = [5.0, 4.8, 4.6, 2.0, 1.0, 0.5, 0.2, 0.1, 0.0, -1.0]
    a, _ = _matrix(eigs, seed=1)
    full_ops, ops = ListOps(a), ListOps(a)
    full = _solver.lanczos(full_ops, _solver.start_vector(full_ops, 7), max_iter=10, tol=1e-2)
    r = _solver.lanczos(ops, _solver.start_vector(ops, 7), max_iter=10, tol=1e-2, threshold=2.5)
    assert r.lower_bound and r.n_matvec < full.n_matvec and 2.5 < r.value <= 5.0
    # an estimate equal to the threshold is not above it: the full rule runs
    eq_ops = ListOps(a)
    r_eq = _solver.lanczos(eq_ops, _solver.start_vector(eq_ops, 7), max_iter=10, tol=1e-2,
                           threshold=full.history[0])
    assert r_eq.history[0] == full.history[0] and r_eq.n_matvec > 1


@pytest.mark.parametrize("solver", ["lanczos", "power"])
def test_extend_spends_more_products_only_when_the_value_decides(solver):
    eigs = [5.0, 4.9, 4.8, 4.7, 1.0, 0.5, 0.2, 0.1, 0.05, 0.0, -0.1, -0.2]
    a, _ = _matrix(eigs, seed=2)
    solve = getattr(_solver, "lanczos" if solver == "lanczos" else "power_iteration")
    tol = 1e-6 if solver == "lanczos" else 1e-4
    short = solve(ListOps(a), _solver.start_vector(ListOps(a), 9), max_iter=3, tol=tol)
    assert not short.converged and short.n_matvec == 3 and short.extended == 0
    assert short.status == "not_converged"
    ext = solve(ListOps(a), _solver.start_vector(ListOps(a), 9), max_iter=3, tol=tol,
                extend=60)
    assert ext.n_matvec > 3 and ext.extended == ext.n_matvec - 3
    assert ext.history[:3] == short.history            # the same run, continued
    if solver == "lanczos":
        assert ext.converged and abs(ext.value - 5.0) <= 1e-6
    # a threshold under the estimate: no drop is certain, the extension is never used
    below = solve(ListOps(a), _solver.start_vector(ListOps(a), 9), max_iter=3, tol=tol,
                  extend=60, threshold=0.5 * short.history[0])
    assert below.lower_bound and below.n_matvec == 1 and below.extended == 0
    # a threshold above lambda_1 (a drop): the value decides, the extension is used
    above = solve(ListOps(a), _solver.start_vector(ListOps(a), 9), max_iter=3, tol=tol,
                  extend=60, threshold=6.0)
    assert not above.lower_bound and above.n_matvec == ext.n_matvec


@pytest.mark.parametrize("kwargs,match", [
    ({"threshold": math.nan}, "threshold must be None or a finite number"),
    ({"threshold": "1.0"}, "threshold must be None or a finite number"),
    ({"threshold": True}, "threshold must be None or a finite number"),
    ({"extend": -1}, "extend must be an int >= 0"),
    ({"extend": 2.0}, "extend must be an int >= 0"),
])
def test_threshold_and_extend_reject_bad_values(kwargs, match):
    ops = ListOps([[1.0, 0.0], [0.0, 2.0]])
    for solve in (_solver.lanczos, _solver.power_iteration):
        with pytest.raises(ValueError, match=match):
            solve(ops, [1.0, 0.0], max_iter=2, tol=0.1, **kwargs)
