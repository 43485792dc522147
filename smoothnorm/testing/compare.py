"""Computed derivatives against central differences, entry by entry, with kinks told apart from wrong derivatives.

`central_differences(f, h)` differentiates f (a function of a scalar t returning arrays) at t = 0 with the steps h
and h / 8; `Comparison` collects computed values against such references (or against plain arrays) for one
quantity and says which entries are wrong; `check_from` turns comparisons into a Check.

Kinks. Where f is smooth, the central differences at both steps agree to O(h^2) and the one-sided differences
disagree by gap = |f(h) - 2 f(0) + f(-h)| / h = h |f''|, eightfold less at the smaller step. Where a kink (ReLU,
max-pool, the Lp norms' signs and arg-max) lies within a step, that step's central difference is off by half its gap.
So an entry counts with the smaller of its errors at the two steps (a kink crossed only by the larger step costs
nothing), and an entry wrong at both steps is a kink, skipped and counted in the report, when its error at the
smaller step is at most that step's gap and the two steps disagree or the gap did not shrink with the step (a kink
at the point itself). A smooth derivative that is wrong fails either way: its differences agree across steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from smoothnorm.testing.report import Check

__all__ = ["Differences", "central_differences", "Comparison", "check_from"]

# Scales below this count as zero (a quantity that is exactly zero everywhere is compared absolutely).
_TINY = 1e-300
# The second, smaller step of central_differences, as a fraction of the first.
SMALL_STEP = 1 / 8


@dataclass
class Differences:
    """Central differences of one array-valued f at steps h and h * SMALL_STEP, and the one-sided gaps at both."""

    central: np.ndarray
    gap: np.ndarray
    central_small: np.ndarray
    gap_small: np.ndarray


def central_differences(f: Callable[[float], tuple], h: float, at_zero: tuple | None = None) -> list[Differences]:
    """Differences of every array in the tuple f(t) returns (f is evaluated at +-h, +-h * SMALL_STEP, and at 0
    unless its value there is given as `at_zero`)."""
    zero = [np.asarray(v, dtype=np.float64) for v in (f(0.0) if at_zero is None else at_zero)]
    out = []
    steps = {}
    for step in (h, h * SMALL_STEP):
        plus = [np.asarray(v, dtype=np.float64) for v in f(step)]
        minus = [np.asarray(v, dtype=np.float64) for v in f(-step)]
        steps[step] = [((p - m) / (2 * step), np.abs(p - 2 * z + m) / step) for p, z, m in zip(plus, zero, minus)]
    for (central, gap), (central_small, gap_small) in zip(steps[h], steps[h * SMALL_STEP]):
        out.append(Differences(central, gap, central_small, gap_small))
    return out


class Comparison:
    """Computed values against references for one quantity (`dx`, `grads['weight']`), entry by entry.

    An entry's error is |computed - reference| / scale, with scale the size of the whole quantity (its largest
    entry, or its norm for derivatives along unit directions), so an entry near zero is not judged on its own.
    """

    def __init__(self, quantity: str, tolerance: float) -> None:
        self.quantity, self.tolerance = quantity, float(tolerance)
        # (error per entry, kink mask, shape, labels) per add; entries settled at the smaller step, counted.
        self._parts: list[tuple[np.ndarray, np.ndarray, tuple[int, ...], list[str] | None]] = []
        self._smaller_step = 0
        self._problems: list[str] = []

    def add(self, computed, reference: np.ndarray | Differences, *, scale: float | None = None, labels=None) -> None:
        """Compare an array (or scalar) with a reference array or its central Differences.

        scale: None for the largest |entry| of either; labels: one per entry of 1-D inputs (e.g. "along random unit
        direction 1"), or None to name entries by their index."""
        c = np.asarray(computed, dtype=np.float64)
        fd = reference if isinstance(reference, Differences) else None
        r = np.asarray(fd.central if fd else reference, dtype=np.float64)
        if c.shape != r.shape:
            self._problems.append(f"{self.quantity} has shape {c.shape}, expected {r.shape}")
            return
        if scale is None:
            finite = np.concatenate([np.abs(c[np.isfinite(c)]), np.abs(r[np.isfinite(r)]), [0.0]])
            scale = float(finite.max())
        scale = max(float(scale), _TINY)
        error = _error(c, r, scale)
        kink = np.zeros(error.shape, dtype=bool)
        if fd is not None:
            error_small = _error(c, fd.central_small, scale)
            gap, gap_small = (np.asarray(g, dtype=np.float64).reshape(-1) / scale for g in (fd.gap, fd.gap_small))
            steps_disagree = _error(fd.central, fd.central_small, scale) > self.tolerance
            self._smaller_step += int(((error > self.tolerance) & (error_small <= self.tolerance)).sum())
            error = np.minimum(error, error_small)
            # Half a one-sided jump, with differences that depend on the step or a gap that does not shrink with it.
            kink = ((error > self.tolerance) & np.isfinite(error) & (error_small <= gap_small)
                    & (steps_disagree | (gap_small > gap / 2)))
        self._parts.append((error, kink, c.shape, labels))

    def add_problem(self, message: str) -> None:
        """A failure found without numbers (a missing output, a wrong dtype)."""
        self._problems.append(message)

    def worst(self) -> float:
        errors = [error[~kink] for error, kink, _, _ in self._parts if (~kink).any()]
        return float(max(e.max() for e in errors)) if errors else 0.0

    def outcome(self) -> tuple[bool, str]:
        """(passed, detail): the failure message, or a note on skipped kinks."""
        compared = sum(int((~kink).sum()) for _, kink, _, _ in self._parts)
        skipped = sum(int(kink.sum()) for _, kink, _, _ in self._parts)
        wrong = sum(int(((error > self.tolerance) & ~kink).sum()) for error, kink, _, _ in self._parts)
        notes = []
        if self._smaller_step:
            notes.append(f"{self.quantity}: {_count(self._smaller_step)} taken at the smaller step (a kink within "
                         "the larger one)")
        if skipped:
            notes.append(f"{self.quantity}: skipped {skipped} of {compared + skipped} comparisons at a kink within "
                         "the difference step")
        if self._problems:
            return False, "; ".join(self._problems + notes)
        if self._parts and not compared:
            return False, f"{self.quantity}: every comparison crossed a kink; nothing could be compared"
        if not wrong:
            return True, "; ".join(notes)
        worst, where = -1.0, ""
        for error, kink, shape, labels in self._parts:
            masked = np.where(kink, -1.0, error)
            i = int(np.argmax(masked))
            if masked[i] > worst:
                worst = float(masked[i])
                index = tuple(int(v) for v in np.unravel_index(i, shape)) if shape else ()
                where = labels[i] if labels is not None else f"at index {index}"
        message = f"{self.quantity} wrong by {worst:.1e} relative at {wrong} of {_count(compared)} (worst {where})"
        return False, "; ".join([message, *notes])


def _count(n: int) -> str:
    return f"{n} comparison{'' if n == 1 else 's'}"


def _error(computed: np.ndarray, reference, scale: float) -> np.ndarray:
    with np.errstate(invalid="ignore", over="ignore"):
        error = np.abs(computed - np.asarray(reference, dtype=np.float64)) / scale
    return np.where(np.isfinite(error), error, np.inf).reshape(-1)


def check_from(name: str, comparisons: list[Comparison], tolerance: float) -> Check:
    """One Check from several comparisons: failed if any failed (their messages first), the worst error of all."""
    outcomes = [comparison.outcome() for comparison in comparisons]
    passed = all(ok for ok, _ in outcomes)
    details = [detail for ok, detail in outcomes if detail and not ok] + [
        detail for ok, detail in outcomes if detail and ok]
    worst = max((comparison.worst() for comparison in comparisons), default=0.0)
    return Check(name, "passed" if passed else "failed", worst, tolerance, "; ".join(details))
