"""The golden set (tests/golden.py): the tiny-profile runs of two DLN specs and one VGG spec give, at 1 and 2
threads, exactly the bits committed in tests/golden.json. A change to a kernel's arithmetic or summation order
fails here until the golden file is regenerated on purpose (`python -m tests.golden`, and the commit says why)."""

import json

import numba
import pytest

from tests.golden import GOLDEN, differences, fingerprint, machine_key, train


@pytest.fixture(scope="module")
def golden():
    data = json.loads(GOLDEN.read_text())
    if data["machine"] != machine_key():
        pytest.skip(f"tests/golden.json was made on another machine or library versions ({data['machine']}; this "
                    f"is {machine_key()}): regenerate it with `python -m tests.golden` to check bits here")
    return data["runs"]


@pytest.mark.parametrize("threads", [1, 2])
def test_golden_runs_give_the_committed_bits(golden, tmp_path, threads):
    if threads > numba.config.NUMBA_NUM_THREADS:
        pytest.skip(f"needs {threads} Numba threads")
    diff = differences(golden, fingerprint(train(tmp_path, threads)))
    assert not diff, ("bits differ from tests/golden.json (if on purpose, regenerate it with `python -m "
                      "tests.golden` and say why in the commit):\n  " + "\n  ".join(diff))
