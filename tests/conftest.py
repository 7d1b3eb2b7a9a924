"""Suite-wide pytest set-up: the hypothesis settings profiles, and torch on one thread.

``HYPOTHESIS_PROFILE`` picks one (default ``ci``):

* ``ci``: derandomized (the same examples on every run and machine, so a red CI is
  reproducible and never flaky), no example database, no deadline (the CI machine is shared
  and slow: speed belongs to benchmarks/, not to tests), a modest number of examples.
* ``dev``: random, ten times the examples, the local example database, for hunting bugs:
  ``HYPOTHESIS_PROFILE=dev pytest tests/properties``.

A test that needs another budget says so with its own ``@settings``; the profile stays the
default for every other one.
"""

from __future__ import annotations

import os
import sys

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=100, derandomize=True, database=None, deadline=None,
    print_blob=True, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "dev", max_examples=1000, derandomize=False, deadline=None, print_blob=True)

_PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
if _PROFILE not in ("ci", "dev"):
    raise ValueError(f"HYPOTHESIS_PROFILE must be 'ci' or 'dev', got {_PROFILE!r}")
settings.load_profile(_PROFILE)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tests that use torch run it on one thread: the models are tiny, one thread is faster,
    and OpenMP threads spin-waiting for each other stall when other jobs share the two cores.
    torch is never imported here, so the core's tests run without it."""
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def full_disk_at():
    """``full_disk_at(monkeypatch, n)``: the ``n``-th fsync of ``hessbatch._outputs`` fails
    with ENOSPC (the n-th file of a set hits a full disk); returns the real fsync."""
    import errno

    def install(monkeypatch, n: int):
        from hessbatch import _outputs
        calls = {"n": 0}
        real = os.fsync

        def fsync(fd):
            calls["n"] += 1
            if calls["n"] == n:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(fd)
        monkeypatch.setattr(_outputs.os, "fsync", fsync)
        return real
    return install


@pytest.fixture
def lock_holder():
    """``lock_holder(folder)``: another process that holds ``folder``'s output lock (as a
    second hessbatch run would), started and locked when this returns its ``Popen``; killed at
    the end of the test unless the test killed it first (to leave a stale lock)."""
    import subprocess
    started = []

    def start(folder):
        holder = subprocess.Popen(
            [sys.executable, "-c", "import sys, time; from hessbatch._outputs import "
             "check_out_dir; check_out_dir(sys.argv[1]); print('locked', flush=True); "
             "time.sleep(60)", str(folder)], stdout=subprocess.PIPE, text=True)
        started.append(holder)
        assert holder.stdout.readline().strip() == "locked"
        return holder
    yield start
    for holder in started:
        holder.kill()
        holder.wait()
