"""Fuzzing helpers: one budget switch (bounded in CI, large in the slow suite) and a count of the cases run.

Each property runs as two tests: `[ci]` with a few dozen examples (seconds) and `[slow]` (marked slow) with
`SLOW_FACTOR` times as many. The terminal summary reports how many fuzz cases ran, per property.
"""

from __future__ import annotations

import collections

import pytest
from hypothesis import HealthCheck, settings

SLOW_FACTOR = 40
CASES: collections.Counter = collections.Counter()

budget = pytest.mark.parametrize(
    "budget", [pytest.param(1, id="ci"), pytest.param(SLOW_FACTOR, id="slow", marks=pytest.mark.slow)]
)


def fuzz_settings(examples: int, budget: int) -> settings:
    """Hypothesis settings for `examples` cases in CI, times `budget` in the slow variant; derandomized in CI."""
    return settings(
        max_examples=examples * budget,
        deadline=None,
        database=None,
        derandomize=budget == 1,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def count(name: str) -> None:
    """Record one fuzz case of property `name` (for the summary)."""
    CASES[name] += 1


def pytest_terminal_summary(terminalreporter):
    if CASES:
        total = sum(CASES.values())
        terminalreporter.write_line(f"fuzz cases run: {total} ({', '.join(f'{k} {v}' for k, v in CASES.items())})")
