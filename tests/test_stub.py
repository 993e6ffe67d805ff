"""The type stub fastbptt/_core.pyi says what the compiled module has: the same names, and for every function the
same arguments (names, order, which have defaults), read from the signatures pybind11 writes into the docstrings."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import fastbptt
from fastbptt import _core

STUB = Path(fastbptt.__file__).with_name("_core.pyi")


def stub_functions() -> dict[str, list[str]]:
    """name -> argument names, with "=" after those that have a default."""
    tree = ast.parse(STUB.read_text())
    functions = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            args = node.args.args
            first_default = len(args) - len(node.args.defaults)
            functions[node.name] = [a.arg + ("=" if i >= first_default else "") for i, a in enumerate(args)]
    return functions


def runtime_signatures(function) -> list[list[str]]:
    """The argument lists of every overload, from pybind11's ``name(arg: type, arg: type = default) -> ...`` lines."""
    signatures = []
    for line in (function.__doc__ or "").splitlines():
        match = re.match(rf"^(?:\d+\. )?{function.__name__}\((.*)\) -> ", line)
        if not match:
            continue
        names, depth, current = [], 0, ""
        for char in match.group(1) + ",":  # split at the commas outside brackets (types hold commas)
            if char in "[(":
                depth += 1
            elif char in "])":
                depth -= 1
            if char == "," and depth == 0:
                name, _, rest = current.partition(":")
                if name.strip():
                    names.append(name.strip() + ("=" if "=" in rest else ""))
                current = ""
            else:
                current += char
        signatures.append(names)
    return signatures


def stub_classes() -> set[str]:
    return {node.name for node in ast.parse(STUB.read_text()).body if isinstance(node, ast.ClassDef)}


def test_stub_names_the_module_s_public_functions_and_classes_and_nothing_else():
    runtime = {name for name in dir(_core) if not name.startswith("_") and callable(getattr(_core, name))}
    assert set(stub_functions()) | stub_classes() == runtime
    assert all(isinstance(getattr(_core, name), type) for name in stub_classes())


def test_every_overload_takes_the_stub_s_arguments():
    for name, arguments in stub_functions().items():
        signatures = runtime_signatures(getattr(_core, name))
        assert signatures, f"{name}: pybind11 wrote no signature"
        for signature in signatures:
            assert signature == arguments, f"{name}: stub {arguments}, module {signature}"
