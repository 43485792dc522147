"""Fuzzing spec files and `--set` overrides: random TOML documents, random edits of the shipped specs (wrong types,
wrong nesting, huge numbers, NaN, negative counts, unknown kinds), non-UTF-8 bytes. load_spec either returns a
spec whose runs can be identified and merged, or raises SpecError naming the file (or the --set item) and key."""

from __future__ import annotations

import copy
import json
import math
import tomllib
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from smoothnorm.runs.schema import BASE_KEYS, SpecError
from smoothnorm.runs.spec import load_spec, merge_runs

from .conftest import budget, count, fuzz_settings

ROOT = Path(__file__).resolve().parents[2]
SPECS = sorted((ROOT / "experiments").rglob("*.toml"))
PARSED = {p: tomllib.loads(p.read_text()) for p in SPECS}


def toml_value(value) -> str:
    """A value as inline TOML (tables inline, so any nesting can be written)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def toml_document(doc: dict) -> str:
    return "".join(f"{json.dumps(k)} = {toml_value(v)}\n" for k, v in doc.items())


_SCALARS = st.one_of(
    st.booleans(), st.integers(-(2**63), 2**63 - 1), st.sampled_from([0, -1, 1, 2**62, -(2**63)]),
    st.floats(), st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -0.0]),
    st.text(max_size=8), st.sampled_from(["vgg", "dln", "batch", "none", "landscape", "band", "gradient", "run"]),
)
_KEYS = st.one_of(st.text(max_size=6), st.sampled_from([*BASE_KEYS, "kind", "label", "runs", "panels", "every"]))
_VALUES = st.recursive(
    _SCALARS,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_KEYS, children, max_size=3),
    max_leaves=8,
)


def _check(path: Path, overrides=()) -> None:
    """load_spec ends in a Spec that can be used, or in SpecError naming the file or the --set item."""
    try:
        spec = load_spec(path, "tiny", overrides)
    except SpecError as exc:
        assert str(path) in str(exc) or "--set" in str(exc), exc
        return
    for run in merge_runs([spec]):
        assert isinstance(run.run_id, str) and run.settings["steps"] >= 1
        json.dumps(run.identity)


@budget
def test_random_toml_documents(tmp_path, budget):
    path = tmp_path / "random.toml"

    @fuzz_settings(60, budget)
    @given(doc=st.dictionaries(
        st.sampled_from(["title", "description", "base", "runs", "probes", "figure", "profile", "other"]),
        _VALUES, max_size=5))
    def prop(doc):
        count("spec random documents")
        path.write_text(toml_document(doc))
        _check(path)

    prop()


def _paths(doc, prefix=()):
    """Every (path to a value) in a parsed document."""
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, (*prefix, i))


def _set_at(doc, path, value):
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value


@budget
def test_random_edits_of_the_shipped_specs(tmp_path, budget):
    path = tmp_path / "edited.toml"

    @fuzz_settings(120, budget)
    @given(data=st.data(), source=st.sampled_from(SPECS))
    def prop(data, source):
        count("spec edits of shipped specs")
        doc = copy.deepcopy(PARSED[source])
        for _ in range(data.draw(st.integers(1, 3))):
            paths = [p for p in _paths(doc) if p]
            where = data.draw(st.sampled_from(paths))
            edit = data.draw(st.sampled_from(["value", "delete", "nest", "wrap"]))
            if edit == "value":
                _set_at(doc, where, data.draw(_VALUES))
            elif edit == "delete":
                parent = doc
                for key in where[:-1]:
                    parent = parent[key]
                del parent[where[-1]]
            elif edit == "nest":  # a table where a value should be
                _set_at(doc, where, {"kind": data.draw(_VALUES)})
            else:  # a value wrapped in a list
                parent = doc
                for key in where[:-1]:
                    parent = parent[key]
                _set_at(doc, where, [parent[where[-1]]])
        path.write_text(toml_document(doc))
        _check(path)

    prop()


@budget
def test_non_utf8_and_random_bytes(tmp_path, budget):
    path = tmp_path / "bytes.toml"
    original = SPECS[0].read_bytes()

    @fuzz_settings(40, budget)
    @given(raw=st.one_of(st.binary(max_size=200),
                         st.tuples(st.integers(0, len(original) - 1), st.binary(min_size=1, max_size=4)).map(
                             lambda t: original[: t[0]] + t[1] + original[t[0]:])))
    def prop(raw):
        count("spec bytes")
        path.write_bytes(raw)
        _check(path)

    prop()


@budget
def test_set_overrides(budget):
    spec = ROOT / "experiments" / "fig10_dln_landscape.toml"

    @fuzz_settings(80, budget)
    @given(items=st.lists(
        st.one_of(
            st.tuples(st.sampled_from([*BASE_KEYS, "bogus", " lr ", ""]), _VALUES.map(toml_value)).map("=".join),
            st.tuples(st.sampled_from(list(BASE_KEYS)), st.text(max_size=12)).map("=".join),
            st.text(max_size=12),
        ),
        max_size=3,
    ))
    def prop(items):
        count("spec --set overrides")
        _check(spec, items)

    prop()


def test_the_reported_cases_are_named_errors(tmp_path):
    """The cases issue 16 found by hand: a number where [[probes]] or [[figure.panels]] should be, a table where a
    panel's kind should be a string; and a newline in --set that would smuggle in a second key."""
    doc = copy.deepcopy(PARSED[ROOT / "experiments" / "fig10_dln_landscape.toml"])
    path = tmp_path / "bad.toml"
    for edit, message in [
        (lambda d: d.update(probes=3), "'probes' expects an array of tables"),
        (lambda d: d["figure"].update(panels=3), "'panels' expects an array of tables"),
        (lambda d: d["figure"]["panels"][0].update(kind={"a": 1}), "'kind' expects one of"),
        (lambda d: d["figure"]["panels"][0].update(runs=[{"a": 1}]), "'runs' expects an array of run labels"),
        (lambda d: d.update(runs=0), "'runs' expects an array of tables"),
        (lambda d: d["base"].update(lr=math.nan), "'lr' expects a finite number"),
        (lambda d: d["probes"][0].update(every=-1), "'every' expects a non-negative integer"),
        (lambda d: d["base"].update(optimizer_options={"momentum": -1.0}), "'optimizer_options'"),
        (lambda d: d["base"].update(optimizer_options={"betas": 1}), "'optimizer_options'"),
    ]:
        bad = copy.deepcopy(doc)
        edit(bad)
        path.write_text(toml_document(bad))
        try:
            load_spec(path, "tiny")
        except SpecError as exc:
            assert message in str(exc) and str(path) in str(exc), (message, exc)
        else:
            raise AssertionError(f"accepted: {message}")
    try:
        load_spec(ROOT / "experiments" / "fig10_dln_landscape.toml", "tiny", ["steps=3\nlr = 5"])
    except SpecError as exc:
        assert "'steps' expects int" in str(exc)
    else:
        raise AssertionError("--set smuggled a second key")
