"""Structure-aware mutation fuzzer of the secondary's stream reader and its
whole checkpoint call (issue 11 item 2).

Each input is a valid forward stream (docs/stream.md) of one or two
checkpoints, built from (seed, index) alone, then mutated: record types,
lengths, padding, PAGE_DATA's count and pfns, the generation, epoch,
last_seq and control id a record claims (CHECKPOINT_INFO, CHECKPOINT_STATE),
records inserted, dropped, repeated or swapped (CHECKPOINT_INFO among
them: twice, alone, away from its CHECKPOINT, a CHECKPOINT without it or
with a body), bytes flipped or overwritten, the stream cut.  It is
sent whole into a socketpair and read by a reader on a small sim domain,
driven as the agent's secondary loop drives it (CHECKPOINT_REQUEST, then
colo_secondary_checkpoint; a CHECKPOINT outside a call, as at first boot).
After each step:

- a failed read or call leaves the domain's memory and context hashes as
  they were, a failed call leaves the guest paused, nothing stays staged,
  and the reader refuses any further record;
- an applied checkpoint claims (in the CHECKPOINT_INFO right before its
  empty CHECKPOINT) the stream's generation, the requested epoch and a
  last_seq not below the stream's last, holds nothing but well-formed
  pages, context and optional records before that, and leaves the domain
  equal to a reference domain given the same pages and context directly
  (write_page, set_context): the valid prefix, applied another way;
- a new or closed reader leaves nothing staged.

One target domain serves every input (a leftover stage would show in a
later one); both domains are made anew after a violation.

Why not atheris: 3.1.0 is not on the package index (3.0.0 is), and its
coverage feedback needs the C built with clang's -fsanitize=fuzzer (we
build with gcc): it would mutate bytes blindly, and blind bytes rarely get
past the image header and PAGE_DATA's length rule to the checkpoint logic.

``python tests/fuzz/ckptfuzz.py --runs N --seed S`` runs N inputs in a
child process, restarts it after a crash (counted, its input saved under
fuzz-artifacts/), and prints the figures; ``--replay FILE`` runs one saved
input on fresh domains.
"""

from __future__ import annotations

import argparse
import json
import mmap
import random
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from colo_plane.native import (
    PAGE_SIZE,
    Bitmap,
    ControlId,
    Direction,
    Domain,
    DomainType,
    ErrorCode,
    EventKind,
    NativeError,
    PageHashes,
    RecordType,
    StreamReader,
    StreamWriter,
    secondary_checkpoint,
)

PAGES = 64  # small: every failure hashes the whole guest
GEN = 5
U64 = 2**64 - 1
OPTIONAL = 0x8000_0000
PAGE_RECORD = 8 + PAGE_SIZE  # a pfn and its page
MAX_INPUT = 160 * 1024  # sent whole before the reader starts: must fit the socket's buffer
MAX_EVENTS = 16
KNOWN = frozenset(int(t) for t in RecordType)
REQUEST = ControlId.CHECKPOINT_REQUEST
ARTIFACTS = Path("fuzz-artifacts")
SAVED_VIOLATIONS = 20
REPORT_EVERY = 10_000  # the worker's figures so far, so a crash loses none but the last few

PALETTE = [bytes([k]) * PAGE_SIZE for k in range(1, 9)] + [bytes(range(256)) * (PAGE_SIZE // 256)]
CONTEXTS = [bytes([k]) * 256 for k in range(1, 5)] + [bytes(range(256))]
HEADER = (
    struct.pack(">QIIH", U64, 0x434F4C4F, 2, 0)  # version 2: CHECKPOINT_INFO, then an empty CHECKPOINT
    + bytes(6)
    + struct.pack("<IHHQ", DomainType.SIM, 12, 0, PAGES)
)


class Violation(Exception):
    """An invariant did not hold."""


# ---- records -------------------------------------------------------------------


@dataclass
class Rec:
    """One record: its length field and padding may be made to lie."""

    type: int
    body: bytearray
    length: int | None = None  # None: the body's
    pad: bytes | None = None  # None: zeros up to a multiple of 8

    def encode(self) -> bytes:
        n = len(self.body) if self.length is None else self.length
        pad = bytes(-len(self.body) % 8) if self.pad is None else self.pad
        return struct.pack("<II", self.type, n & 0xFFFF_FFFF) + bytes(self.body) + pad


def rec(rtype: int, body: bytes) -> Rec:
    return Rec(rtype, bytearray(body))


def page_data(pfns: list[int], pages: list[bytes]) -> Rec:
    head = struct.pack("<II", len(pfns), 0) + struct.pack(f"<{len(pfns)}Q", *pfns)
    return rec(RecordType.PAGE_DATA, head + b"".join(pages))


def control(cid: int, generation: int, epoch: int) -> Rec:
    return rec(RecordType.CHECKPOINT_STATE, struct.pack("<IIQQ", cid, 0, generation, epoch))


def checkpoint_info(generation: int, epoch: int, last_seq: int) -> Rec:
    return rec(RecordType.CHECKPOINT_INFO, struct.pack("<QQQ", generation, epoch, last_seq))


def bare_checkpoint(body: bytes = b"") -> Rec:
    return rec(RecordType.CHECKPOINT, body)


def checkpoint(generation: int, epoch: int, last_seq: int) -> list[Rec]:
    """The end of a checkpoint: its CHECKPOINT_INFO, then the empty CHECKPOINT."""
    return [checkpoint_info(generation, epoch, last_seq), bare_checkpoint()]


def interesting(rng: random.Random, near: int) -> int:
    """A u64 a buggy or hostile peer might claim instead of near."""
    return rng.choice(
        (
            0,
            1,
            (near - 1) & U64,
            (near + 1) & U64,
            U64,
            2**63,
            2**32,
            GEN,
            GEN - 1,
            GEN + 1,
            rng.getrandbits(64),
        )
    )


# ---- valid streams -----------------------------------------------------------------


def checkpoint_body(rng: random.Random) -> list[Rec]:
    """The pages, context and optional records of one checkpoint."""
    out: list[Rec] = []
    for _ in range(rng.choice((0, 1, 1, 2, 3))):
        pfns = [rng.randrange(PAGES) for _ in range(rng.randint(1, 4))]
        out.append(page_data(pfns, [rng.choice(PALETTE) for _ in pfns]))
    if rng.random() < 0.7:
        out.insert(rng.randint(0, len(out)), rec(RecordType.HVM_CONTEXT, rng.choice(CONTEXTS)))
    if rng.random() < 0.1:
        out.insert(rng.randint(0, len(out)), rec(OPTIONAL | 0x42, bytes(rng.randrange(20))))
    return out


def valid_stream(rng: random.Random) -> list[Rec]:
    """One or two checkpoints, each asked for by CHECKPOINT_REQUEST (most
    inputs: the whole call) or not (a first boot: the reader alone)."""
    recs: list[Rec] = []
    epoch, last_seq = rng.randrange(1, 1000), rng.randrange(100)
    requested = rng.random() < 0.8
    for _ in range(rng.choice((1, 1, 2))):
        if requested:
            recs.append(control(REQUEST, GEN, epoch))
        recs += checkpoint_body(rng)
        recs += checkpoint(GEN, epoch, last_seq)
        epoch, last_seq = epoch + rng.choice((1, 1, 2)), last_seq + rng.randrange(3)
    if rng.random() < 0.3:
        recs.append(rec(RecordType.END, b""))
    return recs


# ---- mutations -------------------------------------------------------------------------


Mutator = Callable[[random.Random, list[Rec]], str | None]


def claimed_epochs(recs: list[Rec]) -> list[int]:
    """Epochs the stream names, so inserted records name them too."""
    out = [
        struct.unpack_from("<Q", r.body, 8)[0]
        for r in recs
        if r.type == RecordType.CHECKPOINT_INFO and len(r.body) >= 16
    ]
    return out or [1]


def m_claim(rng: random.Random, recs: list[Rec]) -> str | None:
    """What a CHECKPOINT_INFO or sync point claims: generation, epoch, last_seq, control id."""
    cands = [
        r
        for r in recs
        if r.type in (RecordType.CHECKPOINT_INFO, RecordType.CHECKPOINT_STATE) and len(r.body) == 24
    ]
    if not cands:
        return None
    r = rng.choice(cands)
    if r.type == RecordType.CHECKPOINT_STATE and rng.random() < 0.3:
        off = rng.choice((0, 4))
        struct.pack_into("<I", r.body, off, rng.choice((0, 1, 2, 3, 4, 0xFFFF_FFFF)))
        return "claim control word"
    offsets = (0, 8, 16) if r.type == RecordType.CHECKPOINT_INFO else (8, 16)
    off = rng.choice(offsets)
    struct.pack_into("<Q", r.body, off, interesting(rng, struct.unpack_from("<Q", r.body, off)[0]))
    return "claim field"


def m_retype(rng: random.Random, recs: list[Rec]) -> str | None:
    r = rng.choice(recs)
    r.type = rng.choice((*KNOWN, 0x02, 0x42, OPTIONAL | 0x42, OPTIONAL | 0x01, rng.getrandbits(32)))
    return "retype"


def m_length(rng: random.Random, recs: list[Rec]) -> str | None:
    r = rng.choice(recs)
    n = len(r.body)
    r.length = (
        rng.choice(
            (
                n - 1,
                n + 1,
                n - 8,
                n + 8,
                0,
                24,
                32,
                8 + PAGE_RECORD,
                rng.randrange(2 * n + 16),
                0xFFFF_FFFF,
                2**27 + 8,
            )
        )
        & 0xFFFF_FFFF
    )
    return "length"


def m_insert(rng: random.Random, recs: list[Rec]) -> str | None:
    epoch = rng.choice(claimed_epochs(recs))
    choices: list[Callable[[], list[Rec]]] = [
        lambda: [rec(RecordType.END, b"")],
        lambda: [control(REQUEST, GEN, (epoch + rng.choice((0, 1))) & U64)],
        lambda: [control(rng.randrange(5), interesting(rng, GEN), epoch)],
        lambda: [rec(RecordType.VERIFY, struct.pack("<QQQQ", epoch, 1, 2, PAGES))],
        lambda: [rec(RecordType.VERIFY, struct.pack("<QQQQ", epoch, 1, 2, PAGES) + bytes(8 * PAGES))],
        lambda: [rec(RecordType.CHECKPOINT_DIRTY_PFN_LIST, struct.pack("<2Q", 1, 2))],
        lambda: [rec(OPTIONAL | rng.getrandbits(16), bytes(rng.randrange(40)))],
        lambda: [rec(rng.getrandbits(16) | 0x100, bytes(8))],
        lambda: checkpoint(GEN, epoch, rng.randrange(200)),
        lambda: checkpoint(interesting(rng, GEN), interesting(rng, epoch), rng.getrandbits(64)),
        # the end of a checkpoint in pieces: each alone, and the version-1 CHECKPOINT with a body
        lambda: [checkpoint_info(GEN, epoch, rng.randrange(200))],
        lambda: [bare_checkpoint()],
        lambda: [bare_checkpoint(struct.pack("<QQQ", GEN, epoch, rng.randrange(200)))],
        lambda: [page_data([rng.choice((PAGES, U64, rng.randrange(PAGES)))], [rng.choice(PALETTE)])],
        lambda: [rec(RecordType.HVM_CONTEXT, bytes(rng.choice((0, 8, 255, 257))))],
    ]
    at = rng.randint(0, len(recs))
    recs[at:at] = rng.choice(choices)()
    return "insert"


def m_delete(rng: random.Random, recs: list[Rec]) -> str | None:
    if len(recs) < 2:
        return None
    del recs[rng.randrange(len(recs))]
    return "delete"


def m_duplicate(rng: random.Random, recs: list[Rec]) -> str | None:
    i = rng.randrange(len(recs))
    r = recs[i]
    recs.insert(rng.randint(0, len(recs)), Rec(r.type, bytearray(r.body), r.length, r.pad))
    return "duplicate"


def m_swap(rng: random.Random, recs: list[Rec]) -> str | None:
    if len(recs) < 2:
        return None
    i, j = rng.randrange(len(recs)), rng.randrange(len(recs))
    recs[i], recs[j] = recs[j], recs[i]
    return "swap"


def m_padding(rng: random.Random, recs: list[Rec]) -> str | None:
    """A padding byte not zero, or padding where none belongs."""
    r = rng.choice(recs)
    pad = bytearray(-len(r.body) % 8 or rng.choice((0, 8)))
    if pad:
        pad[rng.randrange(len(pad))] = rng.choice((0, 1, 0x80))
    r.pad = bytes(pad)
    return "padding"


def m_page_data(rng: random.Random, recs: list[Rec]) -> str | None:
    """PAGE_DATA's own fields: count, reserved, a pfn, a byte of a page."""
    cands = [r for r in recs if r.type == RecordType.PAGE_DATA and len(r.body) >= 8 + PAGE_RECORD]
    if not cands:
        return None
    r = rng.choice(cands)
    count = struct.unpack_from("<I", r.body)[0]
    what = rng.randrange(4)
    if what == 0:
        struct.pack_into(
            "<I", r.body, 0, rng.choice((0, count - 1, count + 1, 1024, 1025, 0xFFFF_FFFF)) & 0xFFFF_FFFF
        )
    elif what == 1:
        struct.pack_into("<I", r.body, 4, rng.choice((1, 0x8000_0000)))
    elif what == 2 and count > 0 and 8 + 8 * count <= len(r.body):
        struct.pack_into(
            "<Q", r.body, 8 + 8 * rng.randrange(count), rng.choice((PAGES, PAGES - 1, 0, U64, 2**32))
        )
    else:
        r.body[rng.randrange(8 + 8 * min(count, 4), len(r.body))] ^= 1 << rng.randrange(8)
    return "page data field"


def m_resize(rng: random.Random, recs: list[Rec]) -> str | None:
    """A body a few bytes short or long, its length field agreeing."""
    r = rng.choice(recs)
    k = rng.choice((1, 4, 8))
    if rng.random() < 0.5 and len(r.body) >= k:
        del r.body[-k:]
    else:
        r.body += bytes(k)
    return "resize"


RECORD_MUTATORS: tuple[Mutator, ...] = (
    m_claim,
    m_claim,
    m_claim,
    m_retype,
    m_length,
    m_insert,
    m_insert,
    m_insert,
    m_delete,
    m_duplicate,
    m_swap,
    m_padding,
    m_page_data,
    m_resize,
)


def mutate_bytes(rng: random.Random, data: bytearray) -> str:
    """Byte-level: past any structure (the header included, now and then)."""
    lo = 0 if rng.random() < 0.05 else len(HEADER)
    if len(data) <= lo:
        return "none"
    what = rng.randrange(4)
    at = rng.randrange(lo, len(data))
    if what == 0:
        data[at] ^= 1 << rng.randrange(8)
    elif what == 1:
        data[at] = rng.choice((0, 1, 0x7F, 0x80, 0xFF))
    elif what == 2 and at + 8 <= len(data):
        struct.pack_into("<Q", data, at, interesting(rng, struct.unpack_from("<Q", data, at)[0]))
    else:
        del data[at:]
    return "bytes"


def make_input(seed: int, index: int) -> tuple[bytes, bool, list[str]]:
    """(stream bytes, verify mode, mutations made): from (seed, index) alone."""
    rng = random.Random(seed * 1_000_003 + index)
    recs = valid_stream(rng)
    done: list[str] = []
    n = rng.choices((0, 1, 2, 3), weights=(12, 50, 25, 13))[0]
    byte_level = [rng.random() < 0.2 for _ in range(n)]
    for b in byte_level:
        if not b:
            name = rng.choice(RECORD_MUTATORS)(rng, recs)
            done.append(name or "none")
    data = bytearray(HEADER + b"".join(r.encode() for r in recs))
    done += [mutate_bytes(rng, data) for b in byte_level if b]
    if len(data) > MAX_INPUT:
        del data[MAX_INPUT:]
        done.append("cut to fit")
    return bytes(data), rng.random() < 0.125, done


# ---- the oracle ----------------------------------------------------------------------


@dataclass
class Applied:
    """What the records of one applied checkpoint carry, read in Python."""

    pages: dict[int, bytes] = field(default_factory=dict)
    context: bytes | None = None
    claim: tuple[int, int, int] | None = None  # generation, epoch, last_seq


def parse_page_data(body: bytes, out: Applied) -> None:
    count, reserved = struct.unpack_from("<II", body)
    if reserved or not 1 <= count <= 1024 or len(body) != 8 + count * PAGE_RECORD:
        raise Violation(f"malformed PAGE_DATA applied: count {count}, reserved {reserved}, {len(body)} bytes")
    pfns = struct.unpack_from(f"<{count}Q", body, 8)
    base = 8 + 8 * count
    for i, pfn in enumerate(pfns):
        if pfn >= PAGES:
            raise Violation(f"pfn {pfn} applied")
        out.pages[pfn] = body[base + i * PAGE_SIZE : base + (i + 1) * PAGE_SIZE]  # the later copy wins


def parse_applied(seg: bytes) -> Applied:
    """The records one CHECKPOINT event consumed: pages, context, optional
    records, then CHECKPOINT_INFO right before the empty CHECKPOINT, each
    well formed; anything else is a violation."""
    out, pos = Applied(), 0
    info: tuple[int, int, int] | None = None
    while pos < len(seg):
        if out.claim is not None:
            raise Violation("bytes after the CHECKPOINT in one event")
        rtype, n = struct.unpack_from("<II", seg, pos)
        body, pad = seg[pos + 8 : pos + 8 + n], seg[pos + 8 + n : pos + 8 + n + (-n % 8)]
        pos += 8 + n + (-n % 8)
        if len(body) != n or len(pad) != -n % 8 or any(pad):
            raise Violation(f"record 0x{rtype:x} of {n} bytes with bad padding or short body applied")
        if info is not None and rtype != RecordType.CHECKPOINT:
            raise Violation(f"record 0x{rtype:x} between CHECKPOINT_INFO and its CHECKPOINT applied")
        if rtype == RecordType.PAGE_DATA:
            parse_page_data(body, out)
        elif rtype == RecordType.HVM_CONTEXT:
            out.context = body
        elif rtype == RecordType.CHECKPOINT_INFO and n == 24:
            info = struct.unpack("<QQQ", body)
        elif rtype == RecordType.CHECKPOINT and n == 0:
            if info is None:
                raise Violation("a CHECKPOINT without its CHECKPOINT_INFO applied")
            out.claim = info
        elif not (rtype & OPTIONAL and rtype not in KNOWN):
            raise Violation(f"record 0x{rtype:x} ({n} bytes) inside an applied checkpoint")
    if out.claim is None:
        raise Violation("a checkpoint applied without its CHECKPOINT record")
    return out


# ---- running inputs ----------------------------------------------------------------------


@dataclass
class Stats:
    inputs: int = 0
    violations: int = 0
    applied: int = 0  # checkpoints applied (call or first boot)
    calls: int = 0  # whole checkpoint calls made
    failed_calls: int = 0
    codes: Counter[str] = field(default_factory=Counter)  # how reads and calls failed
    messages: list[str] = field(default_factory=list)  # the first violations

    def merge(self, other: dict[str, object]) -> None:
        for name in ("inputs", "violations", "applied", "calls", "failed_calls"):
            value = other[name]
            assert isinstance(value, int)
            setattr(self, name, getattr(self, name) + value)
        codes, messages = other["codes"], other["messages"]
        assert isinstance(codes, dict) and isinstance(messages, list)
        self.codes.update(codes)
        self.messages += messages[: SAVED_VIOLATIONS - len(self.messages)]

    def as_dict(self) -> dict[str, object]:
        return {
            "inputs": self.inputs,
            "violations": self.violations,
            "applied": self.applied,
            "calls": self.calls,
            "failed_calls": self.failed_calls,
            "codes": dict(self.codes),
            "messages": self.messages,
        }


class Target:
    """The secondary's domain under test, and the reference it must equal."""

    def __init__(self) -> None:
        self.dom = Domain.sim(pages=PAGES, seed=1)
        self.ref = Domain.sim(pages=PAGES, seed=1)
        self.dom.logdirty_enable()  # as the first boot leaves it
        self.dirty = Bitmap(PAGES)
        self.hashes = PageHashes(PAGES)
        self.now = self.dom.hash()
        if self.now != self.ref.hash():
            raise RuntimeError("two new sim domains of one seed differ")

    def close(self) -> None:
        self.dom.close()
        self.ref.close()


def check(ok: bool, what: str) -> None:
    if not ok:
        raise Violation(what)


class Session:
    """One input: one connection, one reader, the agent's secondary loop."""

    def __init__(self, t: Target, sock: socket.socket, data: bytes, verify: bool, stats: Stats) -> None:
        self.t, self.data, self.verify, self.stats = t, data, verify, stats
        self.writer = StreamWriter(sock, timeout=1.0)
        self.reader = StreamReader(sock, Direction.FORWARD, t.dom, min_generation=GEN, timeout=1.0)
        self.last_seq = 0
        self.last_epoch = 0

    def unstaged(self, when: str) -> None:
        check(self.t.dom.staged() == (0, False), f"{self.t.dom.staged()} left staged {when}")

    def failed(self, exc: NativeError, *, call: bool) -> None:
        """A failed read or call changed nothing, left nothing staged, and ended the stream."""
        code = exc.code.name if isinstance(exc.code, ErrorCode) else str(exc.code)
        self.stats.codes[code] += 1
        self.stats.failed_calls += call
        check(self.t.dom.hash() == self.t.now, f"failed with {code} ({exc}) and changed the guest")
        self.unstaged(f"after a failure ({code})")
        check(not call or self.t.dom.paused, f"a failed call ({code}) left the guest running")
        try:
            self.reader.next()
        except NativeError as again:
            check(again.code == ErrorCode.PROTOCOL, f"after {code} the reader read on: {again}")
        else:
            raise Violation(f"after {code} the reader read on")

    def applied(self, start: int, pages: int, last_seq: int, epoch: int | None) -> None:
        """The checkpoint just applied is what its bytes say, and only that."""
        got = parse_applied(self.data[start : self.reader.bytes_read])
        assert got.claim is not None
        generation, claimed_epoch, claimed_seq = got.claim
        check(
            generation == GEN, f"CHECKPOINT of generation {generation} applied on a generation {GEN} stream"
        )
        check(
            epoch is None or claimed_epoch == epoch,
            f"CHECKPOINT of epoch {claimed_epoch} applied for {epoch}",
        )
        check(claimed_seq >= self.last_seq, f"last_seq went back from {self.last_seq} to {claimed_seq}")
        check((pages, last_seq) == (len(got.pages), claimed_seq), f"event says {pages} pages, {last_seq}")
        self.last_seq = claimed_seq
        for pfn, page in got.pages.items():  # the oracle's own path: a few pages an input
            self.t.ref.write_page(pfn, page)
        if got.context is not None:
            try:
                self.t.ref.set_context(got.context)
            except NativeError as exc:
                raise Violation(f"a context the backend refuses was applied: {exc}") from exc
        self.t.now = self.t.ref.hash()
        check(self.t.dom.hash() == self.t.now, "the guest differs from the checkpoint's pages and context")
        self.unstaged("after a checkpoint applied")
        self.stats.applied += 1

    def call(self, epoch: int) -> bool:
        """The whole checkpoint call for epoch; False once the stream ended."""
        self.stats.calls += 1
        start = self.reader.bytes_read
        try:
            r = secondary_checkpoint(
                self.writer,
                self.reader,
                self.t.dom,
                self.t.dirty,
                generation=GEN,
                epoch=epoch,
                page_hashes=self.t.hashes if self.verify else None,
            )
        except NativeError as exc:
            self.failed(exc, call=True)
            return False
        self.t.dom.pause()  # the next input may apply outside a call, which needs it paused
        self.applied(start, r.pages, r.last_seq, epoch)
        return True

    def step(self) -> bool:
        """One event, as the agent's loop takes it; False once the stream ended."""
        start = self.reader.bytes_read
        try:
            ev = self.reader.next()
        except NativeError as exc:
            self.failed(exc, call=False)
            return False
        if ev.kind == EventKind.CHECKPOINT:
            self.applied(start, ev.pages, ev.last_seq, None)
        elif ev.kind == EventKind.CONTROL and ev.control_id == REQUEST:
            if ev.epoch <= self.last_epoch:
                return False  # the agent's loop refuses it and drops the connection
            self.last_epoch = ev.epoch
            return self.call(ev.epoch)
        return ev.kind != EventKind.END

    def run(self) -> None:
        self.unstaged("by a new reader")
        try:
            self.reader.header()
        except NativeError as exc:
            self.failed(exc, call=False)
        else:
            for _ in range(MAX_EVENTS):
                if not self.step():
                    break
        self.reader.close()
        self.unstaged("by a closed reader")


def run_one(t: Target, data: bytes, verify: bool, stats: Stats) -> None:
    tx, rx = socket.socketpair()
    with tx, rx:
        tx.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        tx.setblocking(False)  # never wait: an input too big for the buffer is a harness bug
        tx.sendall(data)
        tx.shutdown(socket.SHUT_WR)
        Session(t, rx, data, verify, stats).run()


def save(artifacts: Path | None, kind: str, seed: int, index: int, data: bytes) -> None:
    if artifacts is not None:
        artifacts.mkdir(parents=True, exist_ok=True)
        (artifacts / f"{kind}-{seed}-{index}.bin").write_bytes(data)


def fuzz(
    seed: int,
    start: int,
    stop: int,
    *,
    progress: mmap.mmap | None = None,
    artifacts: Path | None = None,
    report: Callable[[Stats], None] | None = None,
) -> Stats:
    """Runs inputs [start, stop) of seed on one target; violations are counted, not raised."""
    stats, t, reported = Stats(), Target(), 0
    try:
        for index in range(start, stop):
            if progress is not None:
                progress[:8] = struct.pack("<Q", index)  # the supervisor's pointer, should this crash
            data, verify, mutations = make_input(seed, index)
            try:
                run_one(t, data, verify, stats)
            except Violation as v:
                stats.violations += 1
                if len(stats.messages) < SAVED_VIOLATIONS:
                    stats.messages.append(f"input {index} ({', '.join(mutations)}): {v}")
                    save(artifacts, "violation", seed, index, data)
                t.close()
                t = Target()  # start clean, or one violation repeats in every later input
            stats.inputs += 1
            if report is not None and (stats.inputs % REPORT_EVERY == 0 or stats.violations > reported):
                report(stats)
                reported = stats.violations
    finally:
        t.close()
    return stats


# ---- the command -----------------------------------------------------------------------------


def worker(args: argparse.Namespace) -> int:
    with open(args.progress, "r+b") as f, mmap.mmap(f.fileno(), 8) as progress:

        def report(stats: Stats) -> None:
            print(json.dumps(stats.as_dict()), flush=True)

        report(
            fuzz(args.seed, args.start, args.runs, progress=progress, artifacts=args.artifacts, report=report)
        )
    return 0


def supervise(args: argparse.Namespace) -> int:
    """Runs the worker, again past every crash, and prints the figures.

    The worker writes each input's index to the progress file before it
    runs it, so a crash (the process killed by a signal) names its input."""
    total, crashes, start, t0 = Stats(), 0, args.start, time.monotonic()
    with tempfile.NamedTemporaryFile() as progress:
        progress.write(bytes(8))
        progress.flush()
        while start < args.runs:
            cmd = [sys.executable, __file__, "--worker", "--progress", progress.name]
            cmd += ["--seed", str(args.seed), "--start", str(start), "--runs", str(args.runs)]
            cmd += ["--artifacts", str(args.artifacts)]
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
            lines = proc.stdout.splitlines()
            last = Stats()
            if lines:  # the worker's figures so far (every REPORT_EVERY inputs, each violation, the end)
                last.merge(json.loads(lines[-1]))
            if proc.returncode == 0 and lines:
                total.merge(last.as_dict())
                break
            progress.seek(0)
            index = struct.unpack("<Q", progress.read(8))[0]
            crashes += 1
            try:
                save(args.artifacts, "crash", args.seed, index, make_input(args.seed, index)[0])
            except Exception as exc:  # the harness itself failed on it: its traceback is above
                print(f"ckptfuzz: input {index} cannot be built: {exc!r}", file=sys.stderr)
            print(f"ckptfuzz: worker died (exit {proc.returncode}) on input {index}", file=sys.stderr)
            last.inputs = index + 1 - start  # those it ran, the crashing one included
            total.merge(last.as_dict())
            start = index + 1
    elapsed = time.monotonic() - t0
    rate = total.inputs / elapsed
    print(f"ckptfuzz: seed {args.seed}: {total.inputs} inputs in {elapsed:.1f} s ({rate:.0f}/s)")
    print(f"ckptfuzz: crashes {crashes}, invariant violations {total.violations}")
    print(f"ckptfuzz: checkpoints applied {total.applied}; calls {total.calls}, failed {total.failed_calls}")
    print("ckptfuzz: failures by code: " + ", ".join(f"{k} {v}" for k, v in total.codes.most_common()))
    for message in total.messages:
        print(f"ckptfuzz: VIOLATION {message}")
    return 1 if crashes or total.violations else 0


def replay(path: Path) -> int:
    stats, t = Stats(), Target()
    try:
        run_one(t, path.read_bytes(), False, stats)
    except Violation as v:
        print(f"ckptfuzz: VIOLATION {v}")
        return 1
    finally:
        t.close()
    print(f"ckptfuzz: no violation ({stats.as_dict()})")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--runs", type=int, default=1_000_000, help="inputs to run (their indexes stop here)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--start", type=int, default=0, help="first input index")
    ap.add_argument(
        "--artifacts", type=Path, default=ARTIFACTS, help="where crashing and violating inputs go"
    )
    ap.add_argument("--replay", type=Path, help="run one saved input and stop")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--progress", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.replay is not None:
        return replay(args.replay)
    return worker(args) if args.worker else supervise(args)


if __name__ == "__main__":
    sys.exit(main())
