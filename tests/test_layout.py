"""The package's layers import only downwards: kernels < training < (torch, cli); the kernels never import the
training toolkit, the torch backend or the command line, and nothing but the torch backend and the command line
imports torch."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "python" / "fastbptt"

# What each part of the package must not import (at module level or inside a function).
FORBIDDEN = {
    "fastbptt.kernels": ("fastbptt.training", "fastbptt.torch", "fastbptt.cli", "torch"),
    "fastbptt.training": ("fastbptt.torch", "fastbptt.cli", "torch"),
    "fastbptt.torch": ("fastbptt.training", "fastbptt.cli"),
    "fastbptt": ("fastbptt.torch", "fastbptt.cli", "torch"),  # the package's __init__
}


def module_name(path: Path) -> str:
    parts = ["fastbptt", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved, ``from x import y`` gives both
    ``x`` and ``x.y``, since y may be a module)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)] if node.level else []
            source = ".".join([*base, *([node.module] if node.module else [])])
            names.add(source)
            names.update(f"{source}.{alias.name}" for alias in node.names)
    return names


def part_of(name: str) -> str:
    if name == "fastbptt.__main__":  # python -m fastbptt: the command line's entry
        return "fastbptt.cli"
    for part in ("fastbptt.kernels", "fastbptt.training", "fastbptt.torch", "fastbptt.cli"):
        if name == part or name.startswith(part + "."):
            return part
    return "fastbptt"


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_is_checked():
    assert {part_of(module_name(path)) for path in MODULES} == {
        "fastbptt",
        "fastbptt.kernels",
        "fastbptt.training",
        "fastbptt.torch",
        "fastbptt.cli",
    }


@pytest.mark.parametrize("path", MODULES, ids=lambda path: module_name(path))
def test_imports_go_downwards_only(path):
    forbidden = FORBIDDEN.get(part_of(module_name(path)), ())
    bad = sorted(name for name in imported_names(path) if any(name == f or name.startswith(f + ".") for f in forbidden))
    assert not bad, f"{module_name(path)} imports {bad}"


def test_the_check_sees_relative_and_lazy_imports(tmp_path):
    probe = PACKAGE / "kernels" / "functional.py"
    names = imported_names(probe)
    assert "fastbptt._core" in names and "fastbptt.kernels._checks" in names
    diagnostics = imported_names(PACKAGE / "kernels" / "diagnostics.py")
    assert "fastbptt.kernels.functional.lstm_forward" in diagnostics  # imported inside a function
