"""The hand-written `_native.pyi` must describe exactly what the native module exports."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import turboquant_rs._native as native

STUB = Path(native.__file__).with_name("_native.pyi")


def _stub_names() -> dict[str, set[str]]:
    tree = ast.parse(STUB.read_text())
    names: dict[str, set[str]] = {"": set()}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            names[""].add(node.name)
        elif isinstance(node, ast.ClassDef):
            names[""].add(node.name)
            names[node.name] = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[""].add(node.target.id)
    return names


def test_every_native_name_has_a_stub_and_back() -> None:
    stubs = _stub_names()
    exported = {n for n in dir(native) if not n.startswith("_") or n == "__version__"}
    assert exported == stubs[""] - {"_Packed", "_SideSettings"}
    for name, obj in vars(native).items():
        if inspect.isclass(obj) and not issubclass(obj, BaseException):
            public = {n for n in dir(obj) if not n.startswith("_") or n in ("__init__", "__len__")}
            public |= {"__init__"}
            assert public == stubs[name] | {"__init__"}, name
