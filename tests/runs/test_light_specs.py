"""Loading and listing specs stays light: plain name tables in the schema, equal to the registries they stand for."""

import inspect
import json
import subprocess
import sys

import pytest

from smoothnorm import NORMS
from smoothnorm.nn.norms import NORM_LAYERS
from smoothnorm.runs.schema import NORM_OPTIONS, PANEL_KINDS, SpecError
from smoothnorm.runs.setup import check_norm_options
from smoothnorm.runs.spec import default_spec_folder, list_specs, load_spec, spec_order
from tests.helpers import ROOT

HEAVY = ("numba", "matplotlib", "scipy", "torch")


def test_panel_kinds_equal_the_plots_registry():
    from smoothnorm.plots import PANELS

    assert set(PANEL_KINDS) == set(PANELS)
    assert len(PANEL_KINDS) == len(set(PANEL_KINDS))


def test_norm_names_equal_the_layer_registry():
    assert set(NORMS) == set(NORM_LAYERS) == set(NORM_OPTIONS)


@pytest.mark.parametrize("norm", sorted(NORM_LAYERS))
def test_norm_options_are_the_layer_keywords(norm):
    params = inspect.signature(NORM_LAYERS[norm]).parameters
    keywords = {name for name in params if name != "num_features"}
    # population_samples is read by the run setup (the subset behind population statistics), not by the layer.
    assert set(NORM_OPTIONS[norm]) - {"population_samples"} == keywords


def _imported_by(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code + "\nimport json, sys\n"
                          f"print(json.dumps({{m: m in sys.modules for m in {HEAVY!r}}}))"],
                         capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_loading_every_spec_imports_neither_numba_scipy_matplotlib_nor_torch():
    code = ("from smoothnorm.runs.spec import SPEC_GROUPS, list_specs, load_spec\n"
            "for p in list_specs(None, tuple(SPEC_GROUPS)):\n"
            "    load_spec(p, 'quick')\n")
    assert _imported_by(code) == dict.fromkeys(HEAVY, False)


def test_smoothnorm_list_imports_neither_numba_scipy_matplotlib_nor_torch():
    code = ("import contextlib, io\nfrom smoothnorm import cli\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n    cli.main(['list'])\n")
    assert _imported_by(code) == dict.fromkeys(HEAVY, False)


def test_figures_are_listed_in_figure_order():
    names = [p.stem for p in list_specs(ROOT / "experiments", ("paper",))]
    numbers = [int("".join(ch for ch in name[3:].split("_")[0] if ch.isdigit())) for name in names]
    assert numbers == sorted(numbers)
    assert names.index("fig3a_vgg_ics") < names.index("fig3b_dln_ics") < names.index("fig4_vgg_landscape")
    assert spec_order("fig2_x") < spec_order("fig10_x") < spec_order("bjorck_stable_lr")


def test_default_spec_folder_outside_a_checkout_is_the_repository_s(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert default_spec_folder() == ROOT / "experiments"


def test_unknown_norm_option_is_named_at_load(tmp_path):
    spec = (ROOT / "experiments" / "fig10_dln_landscape.toml").read_text()
    path = tmp_path / "spec.toml"
    path.write_text(spec)
    with pytest.raises(SpecError, match="unknown option 'gropus' for norm 'group'.*groups, eps, affine"):
        load_spec(path, "tiny", ["norm=group", "norm_options={gropus = 2}"])


def test_a_bad_norm_option_value_stops_before_any_run(tmp_path):
    spec = load_spec(ROOT / "experiments" / "fig10_dln_landscape.toml", "tiny",
                     ["norm=noisy_batch", "norm_options={placement = 'sideways'}"])
    with pytest.raises(SpecError, match="norm_options.*placement"):
        check_norm_options(spec.runs[0])


def test_smoothnorm_list_into_a_closed_pipe_stops_quietly(monkeypatch):
    """`smoothnorm list | head -1`: the reader leaves early; the command stops with 141, no traceback."""
    from smoothnorm import cli

    class ClosedPipe:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert cli.main(["list"]) == 141


def test_probe_kinds_equal_the_probe_registry():
    from smoothnorm.measure.loss_surface import NORM_PARAM_POLICIES
    from smoothnorm.runs.schema import PROBE_KEYS
    from smoothnorm.train.probes import PROBES

    assert set(PROBE_KEYS) == set(PROBES)
    assert PROBE_KEYS["surface"]["norm_params"][2] == NORM_PARAM_POLICIES
