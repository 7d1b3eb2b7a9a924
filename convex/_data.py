"""Data for the convex backend: the UCI mushroom set, user arrays and LIBSVM/svmlight files.

Mushroom encoding (docs/convex.md, "Data"): every value that occurs in an attribute gets one
binary column, attributes in the file's order (UCI's agaricus-lepiota.names) and, inside an
attribute, values in alphabetical order of their one-letter code; the missing stalk-root ``?``
is a value like any other. That gives 117 columns and exactly 22 ones per row; the constant
veil-type column (``veil-type=p``) acts as the intercept. Label: poisonous = 1, edible = 0.

Split (**rebuilt**: the paper prints 6905 training and 1819 validation rows, which do not add up
to 8124): ``numpy.random.default_rng(seed).permutation(8124)``; its first ``n_train`` entries are
the training rows, the rest the validation rows, each kept in file order.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np

__all__ = [
    "MUSHROOM_ATTRIBUTES",
    "MUSHROOM_LICENSE",
    "MUSHROOM_SHA256",
    "Dataset",
    "check_arrays",
    "load_mushroom",
    "load_svmlight",
    "split_dataset",
]

MUSHROOM_SHA256 = "e65d082030501a3ebcbcd7c9f7c71aa9d28fdfff463bf4cf4716a3fe13ac360e"
MUSHROOM_LICENSE = ("UCI Machine Learning Repository, \"Mushroom\" (J. Schlimmer, 1987), "
                    "CC BY 4.0, doi 10.24432/C5959T")
MUSHROOM_ATTRIBUTES = (
    "cap-shape", "cap-surface", "cap-color", "bruises", "odor", "gill-attachment",
    "gill-spacing", "gill-size", "gill-color", "stalk-shape", "stalk-root",
    "stalk-surface-above-ring", "stalk-surface-below-ring", "stalk-color-above-ring",
    "stalk-color-below-ring", "veil-type", "veil-color", "ring-number", "ring-type",
    "spore-print-color", "population", "habitat",
)
_MUSHROOM_ROWS = 8124
_MUSHROOM_FILE = "agaricus-lepiota.data"


@dataclass(frozen=True)
class Dataset:
    """A train/validation split of a binary classification set, ready for the model.

    Fields:
        X_train: (n_train, d) float64, C-contiguous, finite.
        y_train: (n_train,) float64 in {0., 1.}.
        X_val: (n_val, d) float64 (n_val may be 0).
        y_val: (n_val,) float64 in {0., 1.}.
        feature_names: d column names (mushroom: ``"odor=n"`` style).
        train_rows, val_rows: row numbers of the source (file order) in each part.
        seed: the split's seed.
        source: where the rows came from (for results.json).
    """

    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    feature_names: tuple[str, ...]
    train_rows: np.ndarray
    val_rows: np.ndarray
    seed: int
    source: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_features(self) -> int:
        return self.X_train.shape[1]

    def __repr__(self) -> str:
        return (f"Dataset(source={self.source!r}, n_train={len(self.y_train)}, "
                f"n_val={len(self.y_val)}, n_features={self.n_features}, seed={self.seed})")


# --------------------------------------------------------------------------------------------
# validation


def check_arrays(X: Any, y: Any, *, name: str = "X") -> tuple[np.ndarray, np.ndarray]:
    """Validate a design matrix and its labels; return float64 C-contiguous copies.

    Args:
        X: (n, d) real array, finite, n >= 1, d >= 1.
        y: (n,) labels, each exactly 0 or 1 (map other binary codings first, or use
            :func:`load_svmlight`, which does).
        name: how ``X`` is called in error messages (``y`` is called ``y`` + the suffix).

    Returns:
        ``(X, y)`` as float64 arrays (copies, so the caller's arrays are never aliased).

    Raises:
        TypeError: non-numeric input.
        ValueError: wrong shapes, empty data, NaN/inf features, features so large that
            X^T X overflows (see :func:`_scale_problem`), labels outside {0, 1}.

    Example:
        >>> X, y = check_arrays([[1.0, 0.0], [0.0, 1.0]], [0, 1])
        >>> X.dtype, y.tolist()
        (dtype('float64'), [0.0, 1.0])
    """
    yname = "y" + name[1:] if name.startswith("X") else f"labels of {name}"
    X = _as_float_array(X, name)
    y = _as_float_array(y, yname)
    if X.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (samples, features), got shape {X.shape}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"{name} must have at least one sample and one feature, got shape "
                         f"{X.shape}")
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise ValueError(f"{yname} must be a 1-D array of length {X.shape[0]} (one label per "
                         f"row of {name}), got shape {y.shape}")
    bad = ~np.isfinite(X)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise ValueError(f"{name} must be finite, got {float(X[r, c])!r} at row {r}, column {c} "
                         f"({int(bad.sum())} non-finite entries)")
    with np.errstate(over="ignore"):
        norms = np.einsum("ij,ij->i", X, X)
    worst = _scale_problem(norms)
    if worst is not None:
        raise ValueError(f"{name} has features too large for float64: row {worst} has "
                         f"||x||^2 = {norms[worst]:.3g}, so X^T X / n (the Hessian, Theorem "
                         f"1's L and M) {_SCALE_TEXT}")
    wrong = (y != 0) & (y != 1)
    if wrong.any():
        i = int(np.flatnonzero(wrong)[0])
        raise ValueError(f"{yname} must hold labels 0 or 1, got {float(y[i])!r} at index {i} "
                         f"({int(wrong.sum())} such labels; map binary labels to 0/1 first)")
    return np.ascontiguousarray(X, dtype=np.float64).copy(), y.astype(np.float64, copy=True)


# Largest n * max_i ||x_i||^2 accepted: X^T X / n sums n such terms, so beyond ~1e308 it is inf
# and the eigen-solvers fail ("Eigenvalues did not converge"); 1e300 leaves a margin for the
# products of the kernels (p (1 - p) x x^T, Lanczos' recurrences).
_MAX_SCALE = 1e300
_SCALE_TEXT = ("would overflow float64; rescale the features (e.g. divide each column by its "
               "largest absolute value)")


def _too_large(sq_norm: float, n: int) -> bool:
    """Whether a row of squared norm ``sq_norm`` among ``n`` rows makes X^T X overflow."""
    return not np.isfinite(sq_norm) or n * sq_norm > _MAX_SCALE


def _scale_problem(row_sq_norms: np.ndarray) -> int | None:
    """The row whose squared norm makes ``n * ||x_i||^2`` too large (or inf), else None."""
    if len(row_sq_norms) == 0:
        return None
    worst = int(np.argmax(row_sq_norms))
    return worst if _too_large(float(row_sq_norms[worst]), len(row_sq_norms)) else None


def _as_float_array(a: Any, name: str) -> np.ndarray:
    try:
        arr = np.asarray(a)
    except Exception as exc:  # ragged lists and the like
        raise ValueError(f"{name} must be a rectangular numeric array: {exc}") from None
    if arr.dtype == bool:
        return arr.astype(np.float64)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    return arr.astype(np.float64, copy=False)


def _check_seed(seed: Any) -> int:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {seed!r} ({type(seed).__name__})")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return int(seed)


# --------------------------------------------------------------------------------------------
# splitting


def split_dataset(X: Any, y: Any, *, n_train: int | None = None, seed: int = 0,
                  feature_names: tuple[str, ...] | None = None, source: str = "arrays",
                  train_fraction: float = 0.85) -> Dataset:
    """Split arrays into training and validation rows with a seeded permutation.

    The first ``n_train`` entries of ``numpy.random.default_rng(seed).permutation(n)`` are the
    training rows, the rest the validation rows; both keep the input order.

    Args:
        X, y: as for :func:`check_arrays`.
        n_train: training rows, 1 <= n_train <= n (default ``round(train_fraction * n)``).
        seed: seed of the permutation, >= 0.
        feature_names: d names (default ``x0, x1, ...``).
        source: a label stored in the Dataset.
        train_fraction: used when ``n_train`` is None, in (0, 1].

    Returns:
        A :class:`Dataset`.

    Raises:
        TypeError, ValueError: bad arrays (see :func:`check_arrays`), n_train or seed.

    Example:
        >>> ds = split_dataset(np.eye(4), [0, 1, 0, 1], n_train=3, seed=0)
        >>> ds.X_train.shape, ds.X_val.shape
        ((3, 4), (1, 4))
    """
    X, y = check_arrays(X, y)
    seed = _check_seed(seed)
    n = X.shape[0]
    if n_train is None:
        if not (isinstance(train_fraction, (int, float)) and 0 < train_fraction <= 1):
            raise ValueError(f"train_fraction must be in (0, 1], got {train_fraction!r}")
        n_train = max(1, int(round(train_fraction * n)))
    if not isinstance(n_train, (int, np.integer)) or isinstance(n_train, bool):
        raise TypeError(f"n_train must be an int, got {n_train!r} ({type(n_train).__name__})")
    if not 1 <= n_train <= n:
        raise ValueError(f"n_train must be in [1, {n}] (the number of rows), got {n_train}")
    if feature_names is None:
        feature_names = tuple(f"x{j}" for j in range(X.shape[1]))
    feature_names = tuple(str(f) for f in feature_names)
    if len(feature_names) != X.shape[1]:
        raise ValueError(f"feature_names must have {X.shape[1]} names, got {len(feature_names)}")
    perm = np.random.default_rng(seed).permutation(n)
    train_rows = np.sort(perm[:n_train])
    val_rows = np.sort(perm[n_train:])
    return Dataset(
        X_train=np.ascontiguousarray(X[train_rows]), y_train=y[train_rows].copy(),
        X_val=np.ascontiguousarray(X[val_rows]), y_val=y[val_rows].copy(),
        feature_names=feature_names, train_rows=train_rows, val_rows=val_rows, seed=seed,
        source=source)


# --------------------------------------------------------------------------------------------
# mushroom


def _mushroom_path() -> str:
    return str(resources.files("hessbatch.convex").joinpath("data", _MUSHROOM_FILE))


def _read_verified(path: str) -> bytes:
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"mushroom data file not found at {path!r}; it ships with hessbatch.convex "
            f"(convex/data/{_MUSHROOM_FILE}): reinstall hessbatch")
    with open(path, "rb") as fh:
        raw = fh.read()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != MUSHROOM_SHA256:
        raise ValueError(
            f"mushroom data file {path!r} has sha256 {digest}, expected {MUSHROOM_SHA256}: "
            "the file is altered or corrupt; restore the original (UCI Mushroom, "
            "doi 10.24432/C5959T)")
    return raw


def encode_mushroom(raw: bytes) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """One-hot encode the lines of agaricus-lepiota.data (no checksum check here).

    Returns:
        ``(X, y, feature_names)``: X (8124, 117) float64 of 0/1 with 22 ones per row for the
        original file, y in {0, 1} (poisonous = 1), names ``"attribute=code"``.

    Raises:
        ValueError: a row without 23 comma-separated fields or a label other than e/p.
    """
    rows = [line.split(",") for line in raw.decode("ascii").splitlines() if line.strip()]
    for i, r in enumerate(rows):
        if len(r) != 1 + len(MUSHROOM_ATTRIBUTES) or r[0] not in ("e", "p"):
            raise ValueError(f"mushroom row {i} is malformed: {','.join(r)!r}")
    codes = np.array(rows, dtype="<U1")
    blocks, names = [], []
    for j, attr in enumerate(MUSHROOM_ATTRIBUTES):
        col = codes[:, j + 1]
        values = np.unique(col)  # sorted: the documented column order
        blocks.append((col[:, None] == values[None, :]).astype(np.float64))
        names.extend(f"{attr}={v}" for v in values)
    X = np.ascontiguousarray(np.hstack(blocks))
    y = (codes[:, 0] == "p").astype(np.float64)
    return X, y, tuple(names)


def load_mushroom(seed: int = 0, n_train: int = 6905, *, path: str | None = None) -> Dataset:
    """The UCI mushroom data, checksum-verified, one-hot encoded and split.

    Args:
        seed: seed of the train/validation permutation (see the module docstring), >= 0.
        n_train: training rows, in [1, 8124]; the remaining rows are the validation set.
        path: another copy of agaricus-lepiota.data (default: the one shipped in the package);
            it must have the same sha256.

    Returns:
        A :class:`Dataset` with 117 one-hot columns (22 ones per row), poisonous = 1.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: the file's sha256 differs (altered or corrupt), or n_train out of range.
        TypeError: seed or n_train not an int.

    Example:
        >>> ds = load_mushroom(seed=0)
        >>> ds.X_train.shape, ds.X_val.shape, int(ds.X_train[0].sum())
        ((6905, 117), (1219, 117), 22)
    """
    path = _mushroom_path() if path is None else os.fspath(path)
    raw = _read_verified(path)
    X, y, names = encode_mushroom(raw)
    if not isinstance(n_train, (int, np.integer)) or isinstance(n_train, bool):
        raise TypeError(f"n_train must be an int, got {n_train!r} ({type(n_train).__name__})")
    if not 1 <= n_train <= _MUSHROOM_ROWS:
        raise ValueError(f"n_train must be in [1, {_MUSHROOM_ROWS}], got {n_train}")
    ds = split_dataset(X, y, n_train=int(n_train), seed=seed, feature_names=names,
                       source="mushroom")
    ds.info.update(license=MUSHROOM_LICENSE, sha256=MUSHROOM_SHA256, file=_MUSHROOM_FILE)
    return ds


# --------------------------------------------------------------------------------------------
# LIBSVM / svmlight text files


_MAX_DENSE_BYTES = 2 ** 31  # 2 GiB: the dense X a LIBSVM file may expand to by default


def load_svmlight(path: str, *, n_features: int | None = None, zero_based: bool = False,
                  max_dense_bytes: int = _MAX_DENSE_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """Read a LIBSVM/svmlight text file into dense arrays, binary labels mapped to {0, 1}.

    Format: one sample per line, ``label index:value index:value ...``; ``#`` starts a comment;
    indices strictly increasing, 1-based unless ``zero_based``. Labels: {0, 1} are kept,
    {-1, +1} become {0, 1}; any other pair of distinct values maps the smaller to 0 and the
    larger to 1.

    Args:
        path: the file.
        n_features: columns of X (default: the largest index seen); an index beyond it is an error.
        zero_based: indices start at 0.
        max_dense_bytes: the largest dense X (float64) to build, default 2 GiB; a huge feature
            index in a small file is an error naming its line instead of a MemoryError.

    Returns:
        ``(X, y)``: X (n, d) float64 dense, y (n,) float64 in {0, 1}.

    Raises:
        FileNotFoundError: no such file.
        ValueError: naming the file and, where there is one, the line: a malformed line,
            bytes that are not UTF-8 text, a feature value that is not finite (it overflows
            float64) or so large that X^T X would overflow, an index that would make X
            larger than ``max_dense_bytes``, more than two labels or a single class, no
            sample.

    Example:
        >>> import tempfile, os
        >>> with tempfile.NamedTemporaryFile("w", suffix=".svm", delete=False) as f:
        ...     _ = f.write("+1 1:0.5 3:1\\n-1 2:2\\n")
        >>> X, y = load_svmlight(f.name); os.unlink(f.name)
        >>> X.tolist(), y.tolist()
        ([[0.5, 0.0, 1.0], [0.0, 2.0, 0.0]], [1.0, 0.0])
    """
    return _read_svmlight(path, n_features=n_features, zero_based=zero_based,
                          max_dense_bytes=max_dense_bytes).dense()


@dataclass(frozen=True)
class _SvmlightRows:
    """A parsed, checked LIBSVM file before its dense X is allocated (``shape`` first, so a
    command can check the memory of the whole run before :meth:`dense`)."""

    path: str
    labels: np.ndarray                       # (n,) already mapped to {0, 1}
    entries: list                            # per row: [(column, value), ...]
    n_features: int

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.labels), self.n_features)

    def dense(self) -> tuple[np.ndarray, np.ndarray]:
        X = np.zeros(self.shape)
        for i, r in enumerate(self.entries):
            for j, v in r:
                X[i, j] = v
        return X, self.labels


def _read_svmlight(path: str, *, n_features: int | None = None, zero_based: bool = False,
                   max_dense_bytes: int = _MAX_DENSE_BYTES) -> _SvmlightRows:
    """Parse and check a LIBSVM file (every check of :func:`load_svmlight`), no dense X yet."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"svmlight file not found: {path!r}")
    labels: list[float] = []
    entries: list[list[tuple[int, float]]] = []
    offset = 0 if zero_based else 1
    widest = (0, 0)  # (largest index + 1, its line)
    largest = (0.0, 0)  # (largest squared row norm, its line)
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not UTF-8 text (byte "
                                 f"0x{raw[exc.start]:02x} at column {exc.start + 1}): not a "
                                 "LIBSVM/svmlight text file") from None
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            try:
                label = float(parts[0])
                row = []
                last = -1
                for tok in parts[1:]:
                    if tok.startswith("qid:"):
                        continue
                    k, v = tok.split(":", 1)
                    j = int(k) - offset
                    val = float(v)
                    if j < 0:
                        raise ValueError(f"index {k} below {offset} (set zero_based="
                                         f"{not zero_based} if the file counts from "
                                         f"{1 - offset})")
                    if j <= last:
                        raise ValueError(f"indices must increase, got {k} after "
                                         f"{last + offset}")
                    if not np.isfinite(val):
                        raise ValueError(f"feature {k} has value {v!r}, which is not finite "
                                         "(it overflows float64)")
                    last = j
                    row.append((j, val))
            except ValueError as exc:
                raise ValueError(f"{path}:{lineno}: malformed svmlight line ({exc}): "
                                 f"{line[:60]!r}") from None
            if not np.isfinite(label):
                raise ValueError(f"{path}:{lineno}: label must be finite, got {parts[0]!r}")
            labels.append(label)
            entries.append(row)
            sq = sum(v * v for _, v in row)
            if not sq <= largest[0]:            # inf (or a larger one) replaces it
                largest = (sq, lineno)
            if row and row[-1][0] + 1 > widest[0]:
                widest = (row[-1][0] + 1, lineno)
    if not labels:
        raise ValueError(f"svmlight file {path!r} holds no sample")
    width = max((r[-1][0] + 1 for r in entries if r), default=0)
    if n_features is None:
        n_features = width
    elif n_features < width:
        raise ValueError(f"n_features={n_features} is smaller than the largest index in "
                         f"{path!r} ({width - 1 + offset})")
    if n_features < 1:
        raise ValueError(f"svmlight file {path!r} has no feature")
    size = len(labels) * n_features * 8
    if size > max_dense_bytes:
        where = f"{path}:{widest[1]}: feature index {widest[0] - 1 + offset}" \
            if n_features == width else f"{path}: n_features={n_features}"
        raise ValueError(f"{where} makes a dense X of {len(labels)} x {n_features} float64 "
                         f"({size / 2 ** 30:.3g} GiB, above max_dense_bytes = "
                         f"{max_dense_bytes / 2 ** 30:.3g} GiB): the index is likely corrupt; "
                         "fix the line, or raise max_dense_bytes if the data is really that "
                         "wide")
    if _too_large(largest[0], len(labels)):
        raise ValueError(f"{path}:{largest[1]}: feature values too large: this row has "
                         f"||x||^2 = {largest[0]:.3g}, so with {len(labels)} rows X^T X / n "
                         f"(the Hessian, Theorem 1's L and M) {_SCALE_TEXT}")
    y = _binary_labels(np.array(labels), path)
    return _SvmlightRows(path, y, entries, n_features)


def _binary_labels(raw: np.ndarray, where: str) -> np.ndarray:
    values = np.unique(raw)
    if len(values) == 1:
        raise ValueError(f"labels in {where!r}: a single label {float(values[0])!r} on every "
                         "sample: a binary classifier needs both classes; check the file (is "
                         "it one class of a split?)")
    if len(values) > 2:
        raise ValueError(f"labels in {where!r} must be binary, got {len(values)} distinct "
                         f"values {values[:5].tolist()}")
    if set(values.tolist()) <= {0.0, 1.0}:
        return raw.astype(np.float64)
    if set(values.tolist()) <= {-1.0, 1.0}:
        return (raw > 0).astype(np.float64)
    return (raw == values[1]).astype(np.float64)
