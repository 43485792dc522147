"""BatchSampler and iterate_minibatches: coverage, determinism, drop_last, resume, full batch."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smoothnorm.data import BatchSampler, iterate_minibatches


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 60), batch_size=st.integers(1, 70), drop_last=st.booleans(), seed=st.integers(0, 2**32))
def test_each_epoch_covers_indices_once(n, batch_size, drop_last, seed):
    if drop_last and batch_size > n:
        with pytest.raises(ValueError, match="drop_last"):
            BatchSampler(n, batch_size, seed=seed, drop_last=drop_last)
        return
    sampler = BatchSampler(n, batch_size, seed=seed, drop_last=drop_last)
    for epoch in range(3):
        batches = list(sampler)
        assert sampler.epoch == epoch + 1 and sampler.index == 0
        assert len(batches) == len(sampler)
        seen = np.concatenate(batches)
        assert seen.dtype == np.int64 and len(np.unique(seen)) == len(seen)  # no repeats within an epoch
        if drop_last:
            assert all(len(b) == batch_size for b in batches)
            assert len(batches) == n // batch_size and len(seen) == n - n % batch_size
        else:
            assert all(len(b) == batch_size for b in batches[:-1]) and 1 <= len(batches[-1]) <= batch_size
            np.testing.assert_array_equal(np.sort(seen), np.arange(n))


def test_deterministic_and_reshuffled_per_epoch():
    a, b, c = (BatchSampler(100, 10, seed=s) for s in (3, 3, 4))
    epochs_a = [np.concatenate(list(a)) for _ in range(3)]
    epochs_b = [np.concatenate(list(b)) for _ in range(3)]
    epochs_c = [np.concatenate(list(c)) for _ in range(3)]
    for ea, eb, ec in zip(epochs_a, epochs_b, epochs_c, strict=True):
        np.testing.assert_array_equal(ea, eb)
        assert not np.array_equal(ea, ec)
    assert not np.array_equal(epochs_a[0], epochs_a[1])
    np.testing.assert_array_equal(epochs_a[2], BatchSampler(100, 10, seed=3).order(2))


def test_generator_seed_is_reproducible_and_saved():
    a = BatchSampler(50, 8, seed=np.random.default_rng(11))
    b = BatchSampler(50, 8, seed=np.random.default_rng(11))
    assert a.seed == b.seed and isinstance(a.seed, int)
    np.testing.assert_array_equal(a.next_batch(), b.next_batch())


def test_resume_continues_with_the_same_batches():
    reference = BatchSampler(37, 5, seed=9, drop_last=True)
    expected = [reference.next_batch() for _ in range(40)]  # crosses several epochs
    interrupted = BatchSampler(37, 5, seed=9, drop_last=True)
    first = [interrupted.next_batch() for _ in range(17)]
    state = json.loads(json.dumps(interrupted.state_dict()))  # survives a JSON checkpoint
    resumed = BatchSampler(37, 5, seed=9, drop_last=True)
    resumed.load_state_dict(state)
    rest = [resumed.next_batch() for _ in range(23)]
    for got, want in zip(first + rest, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    again = BatchSampler.from_state_dict(state)
    np.testing.assert_array_equal(again.next_batch(), expected[17])


def test_pure_function_of_epoch_and_index():
    sampler = BatchSampler(30, 7, seed=1)
    for _ in range(11):
        sampler.next_batch()
    fresh = BatchSampler(30, 7, seed=1)
    np.testing.assert_array_equal(fresh.batch(2, 3), sampler.batch(2, 3))
    np.testing.assert_array_equal(fresh.batch(sampler.epoch, sampler.index), sampler.next_batch())


def test_iteration_yields_the_rest_of_the_epoch():
    sampler = BatchSampler(20, 3, seed=0)
    head = [sampler.next_batch() for _ in range(2)]
    tail = list(sampler)
    assert len(head) + len(tail) == len(sampler) == 7
    np.testing.assert_array_equal(np.sort(np.concatenate(head + tail)), np.arange(20))
    assert (sampler.epoch, sampler.index) == (1, 0)


def test_full_batch():
    sampler = BatchSampler(12, None, seed=5)
    assert len(sampler) == 1 and sampler.batch_size == 12
    for _ in range(3):
        np.testing.assert_array_equal(sampler.next_batch(), np.arange(12))
    assert sampler.epoch == 3 and sampler.state_dict()["batch_size"] is None
    x, y = np.arange(12.0), np.arange(12)
    (batch,) = list(iterate_minibatches(x, y, batch_size=None))
    assert batch[0] is x and batch[1] is y  # no copy for the DLN's full batch
    shuffled = BatchSampler(12, 12, seed=5)  # an explicit batch_size = n still shuffles
    assert not np.array_equal(shuffled.next_batch(), np.arange(12))


def test_no_shuffle_keeps_order():
    sampler = BatchSampler(10, 4, shuffle=False)
    np.testing.assert_array_equal(np.concatenate(list(sampler)), np.arange(10))


def test_iterate_minibatches_pairs_arrays():
    x = np.arange(23 * 2, dtype=np.float32).reshape(23, 2)
    y = np.arange(23)
    batches = list(iterate_minibatches(x, y, batch_size=5, seed=2, epoch=1))
    assert len(batches) == 5
    for xb, yb in batches:
        np.testing.assert_array_equal(xb[:, 0], 2 * yb)
    sampler = BatchSampler(23, 5, seed=2)
    np.testing.assert_array_equal(batches[0][1], sampler.batch(1, 0))
    dropped = list(iterate_minibatches(x, y, batch_size=5, drop_last=True))
    assert len(dropped) == 4 and all(len(b[0]) == 5 for b in dropped)


def test_bad_arguments():
    with pytest.raises(ValueError, match="n must be"):
        BatchSampler(0, 1)
    with pytest.raises(ValueError, match="batch_size"):
        BatchSampler(10, 0)
    with pytest.raises(ValueError, match="seed"):
        BatchSampler(10, 2, seed=-1)
    sampler = BatchSampler(10, 3)
    with pytest.raises(ValueError, match="index"):
        sampler.batch(0, 4)
    with pytest.raises(ValueError, match="epoch"):
        sampler.batch(-1, 0)
    state = sampler.state_dict()
    with pytest.raises(ValueError, match="batch_size=3"):
        BatchSampler(10, 4).load_state_dict(state)
    with pytest.raises(ValueError, match="seed"):
        BatchSampler(10, 3, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="invalid position"):
        sampler.load_state_dict(state | {"index": 99})
    with pytest.raises(ValueError, match="first dimension"):
        iterate_minibatches(np.zeros(3), np.zeros(4), batch_size=2)
    with pytest.raises(ValueError, match="epoch"):
        iterate_minibatches(np.zeros(3), batch_size=2, epoch=-1)  # raised at the call, not at first next()
    with pytest.raises(ValueError, match="at least one"):
        iterate_minibatches(batch_size=2)
