"""Builds raw stream bytes (docs/stream.md) for the malformed-input tests."""

from __future__ import annotations

import struct
from collections.abc import Sequence

from colo_plane.native import PAGE_SIZE, DomainType, RecordType

MARKER = 0xFFFF_FFFF_FFFF_FFFF
IMAGE_ID = 0x434F4C4F
VERSION = 2  # 1: CHECKPOINT carried the claims CHECKPOINT_INFO carries now
OPTIONAL = 0x8000_0000
PAGE_DATA_MAX = 8 + 1024 * (8 + PAGE_SIZE)
MAX_RECORD = 128 * 1024 * 1024
MAX_CONTEXT = 1024 * 1024


def image_header(
    *,
    marker: int = MARKER,
    ident: int = IMAGE_ID,
    version: int = VERSION,
    options: int = 0,
    reserved: bytes = bytes(6),
) -> bytes:
    """The 24-byte big-endian image header."""
    return struct.pack(">QIIH", marker, ident, version, options) + reserved


def domain_header(
    pages: int, *, dom_type: int = DomainType.SIM, page_shift: int = 12, reserved: int = 0
) -> bytes:
    """The 16-byte little-endian domain header."""
    return struct.pack("<IHHQ", dom_type, page_shift, reserved, pages)


def header(pages: int) -> bytes:
    """A valid image + domain header for a sim domain of pages pages."""
    return image_header() + domain_header(pages)


def pad_len(n: int) -> int:
    return (-n) % 8


def record(rtype: int, body: bytes = b"", *, length: int | None = None, pad: bytes | None = None) -> bytes:
    """u32 type, u32 length, body, padding (zeros unless given)."""
    n = len(body) if length is None else length
    return struct.pack("<II", rtype, n) + body + (bytes(pad_len(len(body))) if pad is None else pad)


def page(fill: int) -> bytes:
    return bytes([fill & 0xFF]) * PAGE_SIZE


def page_data_body(
    pfns: Sequence[int], pages: Sequence[bytes], *, count: int | None = None, reserved: int = 0
) -> bytes:
    n = len(pfns) if count is None else count
    return struct.pack("<II", n, reserved) + struct.pack(f"<{len(pfns)}Q", *pfns) + b"".join(pages)


def page_data(pfns: Sequence[int], pages: Sequence[bytes], **kw: int) -> bytes:
    return record(RecordType.PAGE_DATA, page_data_body(pfns, pages, **kw))


def hvm_context(blob: bytes, *, pad: bytes | None = None) -> bytes:
    return record(RecordType.HVM_CONTEXT, blob, pad=pad)


def control(cid: int, generation: int = 1, epoch: int = 1, *, reserved: int = 0) -> bytes:
    return record(RecordType.CHECKPOINT_STATE, struct.pack("<IIQQ", cid, reserved, generation, epoch))


def checkpoint_info(generation: int = 1, epoch: int = 1, last_seq: int = 0) -> bytes:
    """CHECKPOINT_INFO alone: what the checkpoint claims."""
    return record(RecordType.CHECKPOINT_INFO, struct.pack("<QQQ", generation, epoch, last_seq))


def bare_checkpoint(body: bytes = b"") -> bytes:
    """CHECKPOINT alone (empty, as in Xen, unless a body is given)."""
    return record(RecordType.CHECKPOINT, body)


def checkpoint(generation: int = 1, epoch: int = 1, last_seq: int = 0) -> bytes:
    """The end of a checkpoint: CHECKPOINT_INFO, then the empty CHECKPOINT."""
    return checkpoint_info(generation, epoch, last_seq) + bare_checkpoint()


def verify(epoch: int, memory_hash: int, context_hash: int, pages: int) -> bytes:
    return record(RecordType.VERIFY, struct.pack("<QQQQ", epoch, memory_hash, context_hash, pages))


def dirty_list(pfns: Sequence[int]) -> bytes:
    return record(RecordType.CHECKPOINT_DIRTY_PFN_LIST, struct.pack(f"<{len(pfns)}Q", *pfns))


def end() -> bytes:
    return record(RecordType.END)


def head_only(rtype: int, length: int) -> bytes:
    """A record header with no body (for length checks made before the body is read)."""
    return struct.pack("<II", rtype, length)
