"""Numba, set up in one place: ``njit`` with the on-disk cache where one can be written.

Numba caches compiled kernels next to the source (``__pycache__``) or in the user's cache
folder. With a read-only installation and an unwritable HOME neither works, and
``numba.njit(cache=True)`` raises ``RuntimeError: cannot cache function ...: no locator
available`` when the module is imported. This module finds that out once, with a probe
function that lives beside the kernels (same folder, same locator), and then compiles without
a cache, with one :class:`RuntimeWarning` (set ``NUMBA_CACHE_DIR`` to a writable folder to keep
the cache). Only the Numba backends import it: ``backend="numpy"`` never imports numba.
"""

from __future__ import annotations

import warnings

import numba

__all__ = ["CACHE", "njit", "numba"]


def _probe():  # pragma: no cover - never called: only its cache locator is looked up
    return 0


def _cache_usable() -> bool:
    try:
        numba.njit(cache=True)(_probe)
    except RuntimeError as exc:
        if "no locator available" not in str(exc):
            raise
        return False
    return True


CACHE = _cache_usable()
if not CACHE:
    warnings.warn(
        "hessbatch: numba cannot cache compiled kernels here (neither the package folder nor "
        "the user cache folder can be written): compiling without a cache, a few seconds more "
        "per run; set NUMBA_CACHE_DIR to a writable folder to keep the cache",
        RuntimeWarning, stacklevel=2)


def njit(*args, cache: bool = True, **kwargs):
    """``numba.njit``, with ``cache`` honoured only when a cache folder works (see above)."""
    return numba.njit(*args, cache=cache and CACHE, **kwargs)
