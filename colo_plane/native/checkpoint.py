"""One checkpoint a call: each side's steps in one C call (native/checkpoint.c)."""

from __future__ import annotations

from typing import Any

from colo_plane.native._args import u64
from colo_plane.native._ffi import ffi, lib
from colo_plane.native.abi import CheckpointResult
from colo_plane.native.bitmap import Bitmap
from colo_plane.native.domain import Domain, PageHashes
from colo_plane.native.errors import NativeError, _check
from colo_plane.native.netproxy import NetProxy
from colo_plane.native.proxy import Proxy
from colo_plane.native.stream import StreamReader, StreamWriter
from colo_plane.native.testhooks import TestHooks, _hooks_struct

__all__ = ["primary_checkpoint", "secondary_checkpoint"]


def _ckpt_options(generation: int, epoch: int, page_hashes: PageHashes | None) -> Any:
    opt = ffi.new("struct colo_ckpt_options *")
    opt.generation = u64("generation", generation)
    opt.epoch = u64("epoch", epoch)
    opt.page_hashes = page_hashes._buf if page_hashes is not None else ffi.NULL
    return opt


def _ckpt_outcome(code: int, out: Any) -> CheckpointResult:
    """The result; on failure the exception carries the steps done (which
    sync points were sent, and when) as .checkpoint."""
    result = CheckpointResult(*(int(getattr(out, f)) for f in CheckpointResult.__dataclass_fields__))
    try:
        _check(code)
    except NativeError as exc:
        exc.checkpoint = result
        raise
    return result


def primary_checkpoint(
    writer: StreamWriter,
    reader: StreamReader,
    dom: Domain,
    scratch: tuple[Bitmap, Bitmap, Bitmap],
    *,
    generation: int,
    epoch: int,
    page_hashes: PageHashes | None = None,
    proxy: Proxy | None = None,
    netproxy: NetProxy | None = None,
    test_hooks: TestHooks | None = None,
) -> CheckpointResult:
    """The primary's side of one checkpoint; returns at SECONDARY_RESUMED.
    scratch is (A, B, D): B must be the reader's dirty_out.  With proxy, the
    replies the checkpoint covers are released as SECONDARY_RESUMED arrives;
    with netproxy, last_seq is its last ingress frame (read while paused) and
    the held frames the checkpoint covers are released likewise.
    test_hooks break the checkpoint on purpose (tests only)."""
    a, b, d = scratch
    if b is not reader._dirty:
        raise ValueError("B must be the bitmap the reader merges the dirty lists into")
    opt = _ckpt_options(generation, epoch, page_hashes)
    opt.proxy = proxy._p() if proxy is not None else ffi.NULL
    opt.netproxy = netproxy._p() if netproxy is not None else ffi.NULL
    hooks = _hooks_struct(test_hooks)  # held here: opt points into it during the call
    opt.test_hooks = hooks
    out = ffi.new("struct colo_ckpt_result *")
    code = lib.colo_primary_checkpoint(
        writer._fd, reader._p(), dom._p(), a._ptr, b._ptr, d._ptr, opt, writer._timeout, out
    )
    return _ckpt_outcome(code, out)


def secondary_checkpoint(
    writer: StreamWriter,
    reader: StreamReader,
    dom: Domain,
    dirty: Bitmap,
    *,
    generation: int,
    epoch: int,
    page_hashes: PageHashes | None = None,
    netproxy: NetProxy | None = None,
) -> CheckpointResult:
    """The secondary's side, once CHECKPOINT_REQUEST of epoch was read;
    returns once SECONDARY_RESUMED is sent.  With netproxy, it is told the
    applied last_seq before the guest resumes."""
    out = ffi.new("struct colo_ckpt_result *")
    opt = _ckpt_options(generation, epoch, page_hashes)
    opt.netproxy = netproxy._p() if netproxy is not None else ffi.NULL
    code = lib.colo_secondary_checkpoint(
        writer._fd, reader._p(), dom._p(), dirty._ptr, opt, writer._timeout, out
    )
    return _ckpt_outcome(code, out)
