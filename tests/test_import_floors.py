"""The package's imports run one way, down the floors of DESIGN.md: a module imports only from its own floor or
below (module-level and function-level imports alike)."""

import ast
from pathlib import Path

import pytest

import smoothnorm

PACKAGE = Path(smoothnorm.__file__).parent

# Floors, lowest first (DESIGN.md's, read bottom up); a module belongs to the floor of the longest prefix naming it.
FLOORS = [
    ("smoothnorm.kernels", "smoothnorm._validate"),
    ("smoothnorm.nn",),
    # smoothnorm.torch (any PyTorch module as a network) sits beside the models: the run setup builds `torch:` models.
    ("smoothnorm.nn.models", "smoothnorm.optim", "smoothnorm.data", "smoothnorm.runs.store",
     "smoothnorm.runs.provenance", "smoothnorm.torch"),
    ("smoothnorm.measure",),
    # The checking kit runs layers in a network and probes in the training loop; nothing of ours imports it.
    ("smoothnorm.train", "smoothnorm.testing"),
    # The claim vocabulary and its parser import nothing of ours: the spec loader checks a spec's claims with them.
    ("smoothnorm.runs", "smoothnorm.claims.parse"),
    # The cost estimate times runs as the executors would run them (at one thread, their thread limit).
    ("smoothnorm.runs.executors", "smoothnorm.runs.estimate", "smoothnorm.plots", "smoothnorm.claims"),
    ("smoothnorm.cli",),
]


def floor_of(module: str) -> int:
    best, floor = -1, None
    for level, prefixes in enumerate(FLOORS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, floor = len(prefix), level
    if floor is None:
        raise AssertionError(f"{module}: on no floor; add it to FLOORS (and to DESIGN.md)")
    return floor


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if name != "smoothnorm":
            yield name, path


def imported(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("smoothnorm"):
            if node.module == "smoothnorm":
                found.update(f"smoothnorm.{a.name}" for a in node.names if a.name not in ("__version__", "NORMS"))
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("smoothnorm."))
    return found


@pytest.mark.parametrize("name,path", list(modules()), ids=lambda v: v if isinstance(v, str) else "")
def test_imports_run_down_the_floors(name, path):
    mine = floor_of(name)
    upward = sorted(m for m in imported(path) if floor_of(m) > mine)
    assert not upward, f"{name} (floor {mine}) imports from higher floors: {upward}"


def test_every_floor_names_an_existing_module():
    names = {name for name, _ in modules()}
    for prefixes in FLOORS:
        for prefix in prefixes:
            assert prefix in names, prefix


def test_torch_is_imported_only_inside_functions():
    """torch is optional: no module of the package imports smoothnorm.torch (or torch) at import time; the run
    setup imports smoothnorm.torch inside the function that builds a `torch:` model."""
    for name, path in modules():
        if name == "smoothnorm.torch":
            continue
        tree = ast.parse(path.read_text())
        top = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
        names = {a.name for node in top if isinstance(node, ast.Import) for a in node.names}
        names |= {node.module for node in top if isinstance(node, ast.ImportFrom) and node.level == 0}
        names |= {f"smoothnorm.{a.name}" for node in top if isinstance(node, ast.ImportFrom)
                  and node.module == "smoothnorm" for a in node.names}
        assert not names & {"torch", "smoothnorm.torch"}, name
