"""What the checking kit reports: one `Check` per property, gathered in a `LayerReport` or a `ProbeReport`."""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Check", "LayerReport", "ProbeReport", "CheckFailed", "identical", "relative_change", "raised"]


@dataclass
class Check:
    """One named property of a layer or probe and how it came out.

    status: "passed", "failed" or "skipped" (the property does not apply, e.g. no R-pass to check).
    worst_relative_error: the largest error among the comparisons that count (None where nothing is measured).
    tolerance: the largest relative error that passes (None for bit-for-bit checks).
    detail: why it failed, why it was skipped, or notes on a pass (comparisons skipped at kinks).
    """

    name: str
    status: str
    worst_relative_error: float | None = None
    tolerance: float | None = None
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.status != "failed"

    def line(self) -> str:
        worst, error = self.worst_relative_error, ""
        if worst is not None and self.tolerance is not None:
            error = f"worst {worst:.1e} (tol {self.tolerance:.0e})"
        elif worst is not None:  # a bit-for-bit check
            error = f"changed by {worst:.1e}" if worst else "bit for bit"
        return f"  {self.name:<16}{self.status:<9}{error:<26}{self.detail}".rstrip()


@dataclass
class _Report:
    subject: str
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    def failures(self) -> list[Check]:
        return [check for check in self.checks if not check.passed]

    def __getitem__(self, name: str) -> Check:
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(f"no check named {name!r}; checks: {[c.name for c in self.checks]}")

    def __str__(self) -> str:
        return "\n".join([self.subject, *(check.line() for check in self.checks)])

    def raise_if_failed(self) -> None:
        """Raise CheckFailed naming the first failed check, its worst relative error and the whole report."""
        failed = self.failures()
        if not failed:
            return
        first = failed[0]
        error = "" if first.worst_relative_error is None else (
            f" (worst relative error {first.worst_relative_error:.1e}, tolerance "
            f"{'bit for bit' if first.tolerance is None else f'{first.tolerance:.0e}'})")
        raise CheckFailed(f"{first.name}: {first.detail}{error}\n\n{self}", self)


@dataclass
class LayerReport(_Report):
    """The checks `check_layer` ran on one layer: shapes, backward, r_pass, probe_mode, eval_mode, dtypes."""


@dataclass
class ProbeReport(_Report):
    """The checks `check_probe` ran on one probe inside a short training."""


class CheckFailed(AssertionError):
    """Raised by check_layer and check_probe when a check fails; `report` holds every check."""

    def __init__(self, message: str, report: _Report) -> None:
        super().__init__(message)
        self.report = report


def identical(a, b) -> bool:
    """Bit for bit equal: same shape, dtype and bytes (NaN equals itself, -0.0 differs from 0.0)."""
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def relative_change(after, before) -> float:
    """max |after - before| / max |before|: how far a value that should not have changed moved (inf when the two
    do not subtract, e.g. another shape)."""
    try:
        a, b = np.asarray(after, dtype=np.float64), np.asarray(before, dtype=np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            change = float(np.max(np.abs(a - b), initial=0.0)) / max(float(np.max(np.abs(b), initial=0.0)), 1e-300)
    except (TypeError, ValueError):
        return float("inf")
    return change if np.isfinite(change) else float("inf")


def raised(exc: BaseException) -> str:
    """What an exception says and where it was raised, for a failed check's detail."""
    frame = traceback.extract_tb(exc.__traceback__)[-1]
    return f"raised {type(exc).__name__}: {exc} (in {frame.name}, {frame.filename}:{frame.lineno})"
