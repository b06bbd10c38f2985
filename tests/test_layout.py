"""The package's shape: dependencies point one way, and every module reads top to bottom.

The layers, lowest first (README "Layout"): a module may import its own layer and the layers
below it, never one above; `baselines` and `stars` share a layer and do not import each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "starsrec"

LAYERS: tuple[tuple[str, ...], ...] = (
    ("data",),
    ("features",),
    ("recommender",),
    ("evaluation",),
    ("baselines", "stars"),
    ("experiments",),
    ("index",),
    ("serving",),
    ("web",),
    ("cli",),
)
RANK = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}
MAX_LINES = 400


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py"))


def _part(module: str) -> str | None:
    """The layer a dotted `starsrec....` name belongs to (None for the package root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, dotted starsrec module) of every import in a file, function-level ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("starsrec")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "starsrec":
                found += [(node.lineno, f"starsrec.{a.name}") for a in node.names]
            elif node.module.startswith("starsrec."):
                found.append((node.lineno, node.module))
    return found


def test_every_module_has_a_layer():
    parts = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in _modules()}
    assert parts - {"__init__"} <= set(RANK), sorted(parts - set(RANK) - {"__init__"})


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_import_from_a_higher_layer(path: Path):
    importer = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    if importer == "__init__":
        return  # the package root offers the public API: it may import anything
    wrong = []
    for line, module in _imports(path):
        imported = _part(module)
        if imported in (None, "__version__", importer):
            continue
        if RANK[imported] > RANK[importer] or (
            RANK[imported] == RANK[importer] and imported != importer
        ):
            wrong.append(f"line {line}: {module}")
    assert not wrong, f"{path.name} ({importer}) imports from a higher or sibling layer: {wrong}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_over_the_line_limit(path: Path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.name} has {lines} lines; split it by concept"


def test_the_public_api_resolves_and_import_stays_cheap():
    """Every name in `starsrec.__all__` is importable from the package root, and importing
    the package alone loads neither torch nor faiss."""
    import subprocess
    import sys

    code = (
        "import sys, starsrec; assert 'torch' not in sys.modules and 'faiss' not in sys.modules; "
        "[getattr(starsrec, name) for name in starsrec.__all__]; print(len(starsrec.__all__))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout) >= 10
