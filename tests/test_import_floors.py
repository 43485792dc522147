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
    ("smoothnorm.nn.models", "smoothnorm.optim", "smoothnorm.data", "smoothnorm.runs.store",
     "smoothnorm.runs.provenance", "smoothnorm.testing"),
    ("smoothnorm.measure",),
    ("smoothnorm.train",),
    # The claim vocabulary and its parser import nothing of ours: the spec loader checks a spec's claims with them.
    ("smoothnorm.runs", "smoothnorm.claims.parse"),
    ("smoothnorm.runs.executors", "smoothnorm.plots", "smoothnorm.claims", "smoothnorm.torch"),
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


# Upward imports allowed inside functions only, each for a reason: check_probe (the checking kit, on a low floor so
# that layers can be checked without the training stack) runs the probe in the training loop, a floor above it.
LAZY_UPWARD = {"smoothnorm.testing.probe_checks": ("smoothnorm.train",)}


def imported(path: Path, *, lazy_allowed: tuple[str, ...] = ()) -> set[str]:
    """The smoothnorm modules `path` imports, less those under `lazy_allowed` imported inside functions only."""
    tree = ast.parse(path.read_text())
    in_functions = {id(inner) for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                    for inner in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        names = set()
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("smoothnorm"):
            if node.module == "smoothnorm":
                names = {f"smoothnorm.{a.name}" for a in node.names if a.name not in ("__version__", "NORMS")}
            else:
                names = {node.module}
        elif isinstance(node, ast.Import):
            names = {a.name for a in node.names if a.name.startswith("smoothnorm.")}
        if id(node) in in_functions:
            names = {m for m in names if not any(m == p or m.startswith(p + ".") for p in lazy_allowed)}
        found |= names
    return found


@pytest.mark.parametrize("name,path", list(modules()), ids=lambda v: v if isinstance(v, str) else "")
def test_imports_run_down_the_floors(name, path):
    mine = floor_of(name)
    upward = sorted(m for m in imported(path, lazy_allowed=LAZY_UPWARD.get(name, ())) if floor_of(m) > mine)
    assert not upward, f"{name} (floor {mine}) imports from higher floors: {upward}"


def test_lazy_upward_imports_are_still_made_and_only_inside_functions():
    for name, allowed in LAZY_UPWARD.items():
        path = PACKAGE.parent / (name.replace(".", "/") + ".py")
        everything = imported(path)
        assert any(m.startswith(p) for m in everything for p in allowed), f"{name}: drop its LAZY_UPWARD entry"
        assert imported(path, lazy_allowed=allowed) == {m for m in everything if floor_of(m) <= floor_of(name)}


def test_every_floor_names_an_existing_module():
    names = {name for name, _ in modules()}
    for prefixes in FLOORS:
        for prefix in prefixes:
            if prefix != "smoothnorm.torch":  # the optional torch wrapper
                assert prefix in names, prefix
