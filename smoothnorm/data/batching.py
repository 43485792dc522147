"""Shuffled mini-batches that are a pure function of (seed, epoch, index), so training can stop and resume."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def _check_size(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    return int(n)


def _derive_seed(seed: int | np.random.Generator) -> int:
    """An integer seed; a Generator contributes one draw, so the sampler's state stays a plain integer."""
    if isinstance(seed, np.random.Generator):
        return int(seed.integers(0, 2**63))
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0 or a numpy.random.Generator, got {seed!r}")
    return int(seed)


class BatchSampler:
    """Index batches over `n` samples, epoch after epoch, reshuffled per epoch from `(seed, epoch)`.

    n: number of samples. batch_size: samples per batch; None (or n) means full batch, the DLN setting.
    seed: int, or a Generator from which one integer seed is drawn at construction.
    shuffle: permute per epoch (the permutation of epoch e is `default_rng([seed, e]).permutation(n)`);
        with batch_size None the full batch keeps the original order (the gradient is the same set).
    drop_last: drop the final short batch of each epoch instead of yielding it.

    `next_batch()` returns the next batch and moves on, crossing epochs; iterating yields the rest of the
    current epoch. The position is `(epoch, index)`; `state_dict()` / `load_state_dict()` save and restore it,
    so an interrupted run sees the same batches as an uninterrupted one. `batch(epoch, index)` is the pure form.
    """

    def __init__(
        self,
        n: int,
        batch_size: int | None = None,
        *,
        seed: int | np.random.Generator = 0,
        shuffle: bool = True,
        drop_last: bool = False,
    ):
        self.n = _check_size(n)
        if batch_size is None:
            batch_size = self.n
            self.full_batch = True
        else:
            if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
                raise ValueError(f"batch_size must be None or an integer >= 1, got {batch_size!r}")
            if drop_last and batch_size > self.n:
                raise ValueError(f"batch_size {batch_size} > n {self.n} with drop_last=True leaves no batch")
            self.full_batch = False
        self.batch_size = int(batch_size)
        self.seed = _derive_seed(seed)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.epoch = 0
        self.index = 0
        self._cached_epoch: int | None = None
        self._cached_order: np.ndarray | None = None

    def __len__(self) -> int:
        """Batches per epoch."""
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        """The sample order of `epoch` (a new int64 array (n,)), a pure function of (seed, epoch)."""
        return self._order(epoch).copy()

    def _order(self, epoch: int) -> np.ndarray:
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"epoch must be an integer >= 0, got {epoch!r}")
        if self._cached_epoch != epoch:  # one permutation per epoch, not per batch
            if self.shuffle and not self.full_batch:
                order = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            else:
                order = np.arange(self.n, dtype=np.int64)
            self._cached_epoch, self._cached_order = epoch, order
        return self._cached_order

    def batch(self, epoch: int, index: int) -> np.ndarray:
        """Indices of batch `index` of `epoch` (a new int64 array)."""
        if not 0 <= index < len(self):
            raise ValueError(f"index must be in [0, {len(self)}), got {index}")
        start = index * self.batch_size
        return self._order(epoch)[start : start + self.batch_size].copy()

    def next_batch(self) -> np.ndarray:
        """The batch at the current position; then advance (to the next epoch after the last batch)."""
        indices = self.batch(self.epoch, self.index)
        self.index += 1
        if self.index == len(self):
            self.epoch, self.index = self.epoch + 1, 0
        return indices

    def __iter__(self) -> Iterator[np.ndarray]:
        """The remaining batches of the current epoch (all of it from a fresh position), advancing state."""
        epoch = self.epoch
        while self.epoch == epoch:
            yield self.next_batch()

    def state_dict(self) -> dict:
        """Everything needed to continue: position plus the settings, which are checked on load."""
        return {
            "n": self.n,
            "batch_size": None if self.full_batch else self.batch_size,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
            "epoch": self.epoch,
            "index": self.index,
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> BatchSampler:
        """A sampler with the saved settings, at the saved position."""
        sampler = cls(
            state["n"], state["batch_size"], seed=state["seed"], shuffle=state["shuffle"], drop_last=state["drop_last"]
        )
        sampler.load_state_dict(state)
        return sampler

    def load_state_dict(self, state: dict) -> None:
        """Restore the position; the settings in `state` must equal this sampler's (else ValueError)."""
        mine = self.state_dict()
        for key in ("n", "batch_size", "seed", "shuffle", "drop_last"):
            if state.get(key) != mine[key]:
                raise ValueError(
                    f"sampler state has {key}={state.get(key)!r} but this sampler has {key}={mine[key]!r}; "
                    "build the sampler with the saved settings"
                )
        epoch, index = int(state["epoch"]), int(state["index"])
        if epoch < 0 or not 0 <= index < len(self):
            raise ValueError(f"invalid position epoch={epoch}, index={index} for {len(self)} batches per epoch")
        self.epoch, self.index = epoch, index


def iterate_minibatches(
    *arrays: np.ndarray,
    batch_size: int | None,
    seed: int | np.random.Generator = 0,
    epoch: int = 0,
    shuffle: bool = True,
    drop_last: bool = False,
) -> Iterator[tuple[np.ndarray, ...]]:
    """Yield one epoch of mini-batches `(a[idx], b[idx], ...)` from arrays sharing their first dimension.

    Batches are those of `BatchSampler(n, batch_size, seed=seed, shuffle=shuffle, drop_last=drop_last)` at
    `epoch`. With batch_size None the arrays themselves are yielded once (full batch, no copy).
    """
    if not arrays:
        raise ValueError("iterate_minibatches needs at least one array")
    n = len(arrays[0])
    for i, a in enumerate(arrays):
        if len(a) != n:
            raise ValueError(f"arrays must share their first dimension: array 0 has {n}, array {i} has {len(a)}")
    sampler = BatchSampler(n, batch_size, seed=seed, shuffle=shuffle, drop_last=drop_last)
    sampler._order(epoch)  # validates epoch now rather than at the first next()
    return _generate(sampler, arrays, epoch)


def _generate(sampler: BatchSampler, arrays: tuple[np.ndarray, ...], epoch: int) -> Iterator[tuple[np.ndarray, ...]]:
    if sampler.full_batch:
        yield tuple(arrays)
        return
    for index in range(len(sampler)):
        idx = sampler.batch(epoch, index)
        yield tuple(a[idx] for a in arrays)
