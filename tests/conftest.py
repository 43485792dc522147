import zlib

import numpy as np
import pytest


@pytest.fixture
def rng(request):
    """A fresh generator per test, seeded from the test's name so failures reproduce."""
    seed = zlib.crc32(request.node.nodeid.encode())
    return np.random.default_rng(seed)


def pytest_configure(config):
    """With SMOOTHNORM_REQUIRE_TORCH=1 (set by .ci/run), a missing torch fails the session instead of skipping."""
    import os

    # The CLI's default trains runs side by side in worker processes when enough are pending; tests that call it
    # (in this process, with monkeypatches, or in a subprocess) get one run after another unless they ask.
    os.environ.setdefault("SMOOTHNORM_WORKERS", "1")

    if os.environ.get("SMOOTHNORM_REQUIRE_TORCH") == "1":
        try:
            import torch  # noqa: F401
        except ImportError as exc:
            raise pytest.UsageError(
                f"SMOOTHNORM_REQUIRE_TORCH=1 but torch cannot be imported ({exc}); install '.[parity]'"
            ) from exc


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With SMOOTHNORM_REQUIRE_TORCH=1, a torch-marked test that skips is reported as a failure."""
    import os

    outcome = yield
    report = outcome.get_result()
    if os.environ.get("SMOOTHNORM_REQUIRE_TORCH") == "1" and report.skipped and item.get_closest_marker("torch"):
        report.outcome = "failed"
        report.longrepr = f"torch-marked test skipped under SMOOTHNORM_REQUIRE_TORCH=1: {report.longrepr}"
