"""Test policy: tests marked `kernel` need root and real kernel facilities. Locally they skip
when those are missing; with CKPTRACE_REQUIRE_KERNEL=1 (set by .ci/run) such a skip is a failure,
so CI can never pass by not running them."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

REQUIRE_KERNEL = os.environ.get("CKPTRACE_REQUIRE_KERNEL") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.skipped and REQUIRE_KERNEL and item.get_closest_marker("kernel"):
        reason = rep.longrepr[-1] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.outcome = "failed"
        rep.longrepr = f"kernel test skipped while CKPTRACE_REQUIRE_KERNEL=1: {reason}"


@pytest.fixture
def root():
    """Skip (locally) or fail (CI) unless we are root."""
    if os.geteuid() != 0:
        pytest.skip("needs root")


@pytest.fixture
def pidns(root):
    """A factory for workloads in fresh pid namespaces; all are killed at teardown."""
    from nsutil import NsWorkload

    made: list[NsWorkload] = []

    def start(argv, **kw) -> NsWorkload:
        w = NsWorkload(argv, **kw)
        made.append(w)
        return w

    yield start
    for w in made:
        w.kill()
