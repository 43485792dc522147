"""Fuzzing Network.load_state_dict: wrong keys, shapes, dtypes and values end in a ValueError naming the key,
leave the network unchanged, and anything accepted is loaded exactly."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from smoothnorm.nn import models

from .conftest import budget, count, fuzz_settings

_VALUES = st.one_of(
    st.none(), st.text(max_size=4), st.integers(-(2**70), 2**70), st.floats(), st.booleans(),
    st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=5),
    st.lists(st.lists(st.integers(0, 3), max_size=3), max_size=3),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
)
_DTYPES = st.sampled_from(
    [np.float16, np.float32, np.float64, np.int8, np.int64, np.uint64, np.bool_, np.complex128, object, "U3", "S2"]
)


def _mutations(keys: list[str]):
    return st.lists(
        st.one_of(
            st.tuples(st.just("drop"), st.sampled_from(keys)),
            st.tuples(st.just("add"), st.text(max_size=12)),
            st.tuples(st.just("value"), st.sampled_from(keys), _VALUES),
            st.tuples(st.just("dtype"), st.sampled_from(keys), _DTYPES),
            st.tuples(st.just("reshape"), st.sampled_from(keys), st.lists(st.integers(0, 5), max_size=3)),
            st.tuples(st.just("special"), st.sampled_from(keys),
                      st.sampled_from([np.nan, np.inf, -np.inf, 1e300, -1e39, 2.5, 2.0**63, -1.0])),
        ),
        min_size=1,
        max_size=3,
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@budget
def test_load_state_dict_validates_everything(budget, dtype):
    net = models.dln(3, 4, in_dim=2, out_dim=2, norm="batch", dtype=dtype, seed=1)
    good = models.dln(3, 4, in_dim=2, out_dim=2, norm="batch", dtype=dtype, seed=2).state_dict()
    keys = sorted(good)

    @fuzz_settings(60, budget)
    @given(mutations=_mutations(keys), strict=st.booleans())
    def prop(mutations, strict):
        count("load_state_dict")
        state = {k: v.copy() for k, v in good.items()}
        for op, key, *arg in mutations:
            if op == "drop":
                state.pop(key, None)
            elif op == "add":
                state[key] = np.zeros(1)
            elif op == "value":
                state[key] = arg[0]
            elif op == "dtype" and key in state and isinstance(state[key], np.ndarray):
                try:
                    state[key] = state[key].astype(arg[0])
                except (ValueError, TypeError, OverflowError):
                    pass  # a conversion NumPy itself refuses (a string back to a number)
            elif op == "reshape":
                state[key] = np.zeros(tuple(arg[0]))
            elif op == "special" and key in state and isinstance(state[key], np.ndarray):
                state[key] = np.full(state[key].shape, arg[0])
        before = net.state_dict()
        try:
            net.load_state_dict(state, strict=strict)
        except ValueError as exc:
            assert "state" in str(exc)
            for k, v in net.state_dict().items():  # refused: nothing changed
                np.testing.assert_array_equal(v, before[k])
            return
        after = net.state_dict()
        for k, target in after.items():
            if k not in state:
                np.testing.assert_array_equal(target, before[k])
                continue
            given_value = np.asarray(state[k])
            # Accepted: finite real numbers of the right shape, loaded as the nearest value of the network's dtype.
            assert given_value.shape == target.shape and given_value.dtype.kind in "fiu"
            np.testing.assert_array_equal(target, given_value.astype(target.dtype))
        net.load_state_dict(before)

    prop()
