"""The colo_plane.native package's structure: its public face, and the one
table from C error code to exception class."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from colo_plane import native
from colo_plane.native import errors, testhooks
from colo_plane.native._ffi import ffi
from colo_plane.native.abi import ErrorCode

PACKAGE = Path(native.__file__).parent

STREAM_CODES = [ErrorCode(c) for c in range(ErrorCode.BAD_MAGIC, ErrorCode.PROTOCOL + 1)]
BACKEND_CODES = [ErrorCode(c) for c in range(ErrorCode.NOT_PAUSED, ErrorCode.DUPLICATE + 1)]


def test_public_face_resolves() -> None:
    """Every name of __all__ is there, and nothing private is in it."""
    for name in native.__all__:
        assert hasattr(native, name), name
        assert not name.startswith("_"), name
    assert len(set(native.__all__)) == len(native.__all__)


def test_every_code_has_its_class() -> None:
    """The table covers every code but OK, with the classes callers catch."""
    assert set(errors.ERRORS) == set(ErrorCode) - {ErrorCode.OK}
    assert errors.ERRORS[ErrorCode.INVAL] is native.InvalidArgument
    assert errors.ERRORS[ErrorCode.TIMEOUT] is native.StreamTimeout
    assert errors.ERRORS[ErrorCode.DISARMED] is native.Disarmed
    assert errors.ERRORS[ErrorCode.NOMEM] is native.NativeError
    for code in (ErrorCode.IO, ErrorCode.EOF, ErrorCode.TRUNCATED):
        assert errors.ERRORS[code] is native.StreamClosed, code
    for code in [*STREAM_CODES, ErrorCode.WRONG_GENERATION]:
        assert errors.ERRORS[code] is native.StreamError, code
    for code in BACKEND_CODES:
        assert errors.ERRORS[code] is native.BackendError, code


@pytest.mark.parametrize("code", [c for c in ErrorCode if c != ErrorCode.OK], ids=lambda c: c.name)
def test_raise_uses_the_table(code: ErrorCode) -> None:
    with pytest.raises(native.NativeError) as info:
        errors._check(int(code))
    assert type(info.value) is errors.ERRORS[code]
    assert info.value.code == code


def test_unknown_code_is_a_native_error() -> None:
    with pytest.raises(native.NativeError) as info:
        errors._check(9999)
    assert type(info.value) is native.NativeError
    assert info.value.code == 9999
    errors._check(0)  # OK raises nothing


def _package_imports(path: Path) -> set[str]:
    """The package's modules path imports."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("colo_plane.native"):
            parts = node.module.split(".")
            out.update([parts[2]] if len(parts) > 2 else [a.name for a in node.names])
    return out


def test_no_import_circle() -> None:
    """Each module imports only modules below it (abi and errors at the bottom)."""
    graph = {p.stem: _package_imports(p) for p in PACKAGE.glob("*.py")}
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, " -> ".join((*path, module))
        if module not in done:
            for dep in graph.get(module, set()):
                visit(dep, (*path, module))
            done.add(module)

    for module in graph:
        visit(module, ())


def test_only_ffi_imports_the_compiled_module() -> None:
    importers = set()
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("colo_plane._native"):
                importers.add(path.stem)
    assert importers == {"_ffi"}


def test_test_hooks_apart_from_the_options() -> None:
    """The primary's call takes its test switches as one TestHooks, and none
    reach C unless a test sets one."""
    params = inspect.signature(native.primary_checkpoint).parameters
    assert "test_hooks" in params
    assert not {"send_only_a", "cut_after"} & set(params)
    assert testhooks._hooks_struct(None) == ffi.NULL
    assert testhooks._hooks_struct(native.TestHooks()) == ffi.NULL
    hooks = testhooks._hooks_struct(native.TestHooks(send_only_a=True, cut_after_bytes=300_000))
    assert (hooks.send_only_a, hooks.cut_after) == (1, 300_000)
    with pytest.raises(ValueError, match="cut_after_bytes"):
        testhooks._hooks_struct(native.TestHooks(cut_after_bytes=-1))
