"""Switches that break the protocol on purpose, for tests only, kept apart from the production options."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from colo_plane.native._args import u64
from colo_plane.native._ffi import ffi, lib
from colo_plane.native.bitmap import Bitmap
from colo_plane.native.domain import Domain
from colo_plane.native.errors import _check
from colo_plane.native.stream import StreamWriter

__all__ = ["TestHooks", "write_pages_cut"]


@dataclass(frozen=True)
class TestHooks:
    """The primary checkpoint's test hooks (struct colo_ckpt_test_hooks),
    which the agent's hidden --test-* flags set.  The defaults break nothing,
    and then no hooks reach C at all."""

    __test__ = False  # a pytest collecting a test module that imports it: not a test class

    send_only_a: bool = False  # send A instead of D = A | B (tests/unit/test_seed002.py: wrong)
    cut_after_bytes: int = 0  # tear the next checkpoint after this many PAGE_DATA bytes


def _hooks_struct(hooks: TestHooks | None) -> Any:
    """The C struct for hooks, or NULL when there are none to apply."""
    if hooks is None or hooks == TestHooks():
        return ffi.NULL
    out = ffi.new("struct colo_ckpt_test_hooks *")
    out.send_only_a = int(bool(hooks.send_only_a))
    out.cut_after = u64("cut_after_bytes", hooks.cut_after_bytes)
    return out


def write_pages_cut(writer: StreamWriter, dom: Domain, pages: Bitmap, cut_after: int) -> None:
    """As writer.pages(), but stop after cut_after bytes, mid-record, to tear a checkpoint."""
    _check(
        lib.colo_write_pages_cut(
            writer._fd, dom._p(), pages._ptr, u64("cut_after", cut_after), writer._timeout
        )
    )
