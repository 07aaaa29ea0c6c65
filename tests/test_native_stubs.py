"""The hand-written type stubs (python/tsuika/_native.pyi) must not drift from
the compiled module: same functions, same parameter names, kinds and defaults."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import tsuika._native as native

STUB = Path(__file__).resolve().parents[1] / "python" / "tsuika" / "_native.pyi"


def _stub_functions() -> dict[str, ast.FunctionDef]:
    tree = ast.parse(STUB.read_text())
    return {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}


def _stub_classes() -> set[str]:
    tree = ast.parse(STUB.read_text())
    return {n.name for n in tree.body if isinstance(n, ast.ClassDef)}


def _stub_params(fn: ast.FunctionDef) -> list[tuple[str, str, bool]]:
    """(name, kind, has_default) for each parameter of a stub function."""
    a = fn.args
    out = []
    positional = a.posonlyargs + a.args
    n_default = len(a.defaults)
    for i, p in enumerate(positional):
        has_default = i >= len(positional) - n_default
        out.append((p.arg, "positional", has_default))
    for p, d in zip(a.kwonlyargs, a.kw_defaults, strict=True):
        out.append((p.arg, "keyword", d is not None))
    return out


def _native_params(fn) -> list[tuple[str, str, bool]]:
    sig = inspect.signature(fn)
    out = []
    for p in sig.parameters.values():
        kind = "keyword" if p.kind is p.KEYWORD_ONLY else "positional"
        out.append((p.name, kind, p.default is not p.empty))
    return out


def test_every_native_function_has_a_matching_stub():
    stubs = _stub_functions()
    public = {
        name
        for name in dir(native)
        if not name.startswith("_") and callable(getattr(native, name)) and name[0].islower()
    }
    assert public == set(stubs), (
        f"only in module: {public - set(stubs)}, only in stub: {set(stubs) - public}"
    )
    for name, fn in stubs.items():
        assert _native_params(getattr(native, name)) == _stub_params(fn), name


def test_exception_classes_match_and_nest():
    classes = _stub_classes()
    assert classes == {
        "ImageError",
        "EmptyImageError",
        "UnsupportedImageError",
        "CorruptImageError",
        "DecompressionBombError",
    }
    for name in classes - {"ImageError"}:
        assert issubclass(getattr(native, name), native.ImageError)
    assert issubclass(native.ImageError, ValueError)
