"""The bounds of everything the control plane takes from outside, checked
here and only here: every DomainSpec field (the coordinator checks it at
ProtectDomain, both agents at PrepareSecondary and StartPrimary) and the
other numbers and strings of the Coordinator API.  A value out of bounds
raises BoundError: INVALID_ARGUMENT naming the field and its bound.  The
table and the reasons for each bound are in docs/coordinator.md."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import grpc
from google.protobuf import duration_pb2
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from colo_plane._proto import colo_pb2
from colo_plane.rpc import RpcError

PAGE_BYTES = 4096
MS = 1_000_000  # nanoseconds
S = 1000 * MS


class BoundError(RpcError):
    """A field out of its bound: INVALID_ARGUMENT, with the field, the bound
    and the value in the message (and as attributes, for tests and tools)."""

    def __init__(self, field: str, bound: str, got: object, *, hint: str = "") -> None:
        message = f"{field} must be {bound}, got {got}"
        super().__init__(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{message}: {hint}" if hint else message,
            reason=colo_pb2.ERROR_REASON_INVALID_FIELD,
            metadata={"field": field},
        )
        self.field = field
        self.bound = bound
        self.got = got


# ---- the table ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Range:
    """A number within low..high; with `default`, 0 also passes (it means
    "not set: use the default")."""

    field: str
    low: int | float
    high: int | float
    bound: str  # how messages and docs say it
    hint: str = ""
    default: bool = False

    def check(self, value: int | float) -> None:
        if self.default and value == 0:
            return
        if not self.low <= value <= self.high:  # NaN fails too
            raise BoundError(self.field, self.bound, value, hint=self.hint)


@dataclass(frozen=True)
class Span:
    """A google.protobuf.Duration within low..high nanoseconds; unset (or
    zero) passes and means the default."""

    field: str
    low: int
    high: int
    hint: str = ""

    @property
    def bound(self) -> str:
        return f"unset (the default) or {human(self.low)}..{human(self.high)}"

    def check(self, d: duration_pb2.Duration) -> None:
        if not -S < d.nanos < S or (d.seconds and d.nanos and (d.seconds < 0) != (d.nanos < 0)):
            raise BoundError(self.field, "a valid Duration", f"{d.seconds} s {d.nanos} ns")
        ns = d.seconds * S + d.nanos
        if ns != 0 and not self.low <= ns <= self.high:
            raise BoundError(self.field, self.bound, human(ns), hint=self.hint)


def human(ns: int) -> str:
    """A duration as people write it: 1 ns, 10 ms, 1 h, 1000000000 s."""
    for unit, size in (("h", 3600 * S), ("min", 60 * S), ("s", S), ("ms", MS), ("us", 1000)):
        if ns and ns % size == 0:
            return f"{ns // size} {unit}"
    return f"{ns} ns"


SIM_PAGES = Range(
    "spec.sim.pages",
    1,
    1 << 20,
    "1..1048576 pages (4 GiB)",
    hint="a sim domain is allocated and written in full on both hosts when it opens; use a Xen "
    "domain for bigger guests",
)
SIM_DIRTY_RATE = Range(
    "spec.sim.dirty_rate",
    0,
    10_000_000,
    "0..10000000 pages/s (40 GB/s)",
    hint="more than the simulated vCPU can write",
)
SIM_HOT_PERCENT = Range("spec.sim.hot_percent", 0, 100, "0..100 (a share of the writes)")
SIM_DIVERGENCE = Range("spec.sim.divergence_probability", 0.0, 1.0, "0.0..1.0 (a probability)")
SERVICE_PORT = Range("spec.service.port", 1, 65535, "0 (the agent picks one) or 1..65535", default=True)
CHECKPOINT_INTERVAL = Span(
    "spec.checkpoint_interval",
    10 * MS,
    3600 * S,
    hint="below 10 ms checkpoints cost more than they protect; above 1 h a checkpoint copies most of memory",
)
CHECKPOINT_TIMEOUT = Span(
    "spec.checkpoint_timeout",
    100 * MS,
    600 * S,
    hint="below 100 ms a loaded host fails healthy checkpoints and loses its secondary; above "
    "10 min held replies wait that long",
)
REPLY_TIMEOUT = Span(
    "spec.service.reply_timeout",
    1 * MS,
    10 * S,
    hint="the proxy counts milliseconds, and a client waits this long before a checkpoint is asked for",
)
ACCEPT_TIMEOUT = Span("accept_timeout", 1 * S, 3600 * S)
FIRST_BOOT_TIMEOUT = Span("first_boot_timeout", 1 * S, 3600 * S)
DETAIL_CHARS = 1024
LABELS = 32
LABEL_CHARS = 128
BACKENDS = 8

# Every fixed numeric bound, for the docs and the tests (the rest depend on another field).
RANGES: tuple[Range, ...] = (
    SIM_PAGES,
    SIM_DIRTY_RATE,
    SIM_HOT_PERCENT,
    SIM_DIVERGENCE,
    SERVICE_PORT,
)
SPANS: tuple[Span, ...] = (
    CHECKPOINT_INTERVAL,
    CHECKPOINT_TIMEOUT,
    REPLY_TIMEOUT,
    ACCEPT_TIMEOUT,
    FIRST_BOOT_TIMEOUT,
)

# ---- names -------------------------------------------------------------------------------

DOMAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
HOST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,252}")
XEN_NAME = re.compile(r"[!-.0-~]{1,64}")  # printable ASCII but space and '/' (a xenstore path element)
TOKEN = re.compile(r"[!-~]{1,64}")  # incarnation, version: printable ASCII, no space
BACKEND = re.compile(r"[a-z][a-z0-9_-]{0,31}")
DOMID_MAX = 0x7FEF  # the last domid before Xen's reserved ones
HOSTNAME_CHARS = 253


def check_domain(name: str, *, field: str = "domain") -> str:
    if not DOMAIN_NAME.fullmatch(name):
        raise BoundError(
            field,
            "1..63 letters, digits, '-', '_' or '.', starting with a letter or digit",
            repr(name),
            hint=f"domain {name!r} is not a valid name",
        )
    return name


def check_host(host: str, *, field: str, optional: bool = False) -> str:
    """A host_id: the agent's stable name (a DNS name or a node name)."""
    if optional and not host:
        return host
    if not HOST_ID.fullmatch(host):
        raise BoundError(
            field,
            ("empty or " if optional else "")
            + "1..253 letters, digits, '-', '_', '.' or ':', starting with a letter or digit",
            repr(host),
        )
    return host


def check_generation(value: int, *, field: str = "generation") -> int:
    """Set (0 means not set); how high is for the holder to judge: a
    generation above the pair's was never issued."""
    if value < 1:
        raise BoundError(field, "1 or more", value, hint="it is the pair's fencing token; 0 means not set")
    return value


def check_text(value: str, *, field: str, chars: int) -> str:
    if len(value) > chars or any(not c.isprintable() for c in value):
        raise BoundError(field, f"at most {chars} printable characters", f"{len(value)} characters")
    return value


def check_enum(value: int, enum: EnumTypeWrapper, *, field: str, unset: bool = False) -> int:
    """A value of a proto enum; unset allows 0 (else 0, "not set", is refused)."""
    values = enum.values()
    if value not in values or (value == 0 and not unset):
        names = ", ".join(enum.Name(v) for v in values if v or unset)
        raise BoundError(field, f"one of {names}", value)
    return value


def _enums(values: Iterable[int], enum: EnumTypeWrapper, *, field: str) -> None:
    seen = list(values)
    if len(seen) > len(enum.values()):
        raise BoundError(field, f"at most {len(enum.values())} values", len(seen))
    for v in seen:
        check_enum(v, enum, field=field)


# ---- the DomainSpec ----------------------------------------------------------------------


def check_spec(spec: colo_pb2.DomainSpec) -> None:
    """Every field of a DomainSpec; raises BoundError on the first out of bounds."""
    check_domain(spec.domain, field="spec.domain")
    backend = spec.WhichOneof("backend")
    if backend == "sim":
        _check_sim(spec.sim)
    elif backend == "xen":
        _check_xen_name(spec.xen.name, field="spec.xen.name")
        if spec.xen.secondary_name:
            _check_xen_name(spec.xen.secondary_name, field="spec.xen.secondary_name")
    else:
        raise BoundError("spec.backend", "sim or xen", "neither", hint="spec must set a backend")
    CHECKPOINT_INTERVAL.check(spec.checkpoint_interval)
    CHECKPOINT_TIMEOUT.check(spec.checkpoint_timeout)
    SERVICE_PORT.check(spec.service.port)
    REPLY_TIMEOUT.check(spec.service.reply_timeout)
    if spec.HasField("network"):
        check_ifname(spec.network.interface, field="spec.network.interface")
        check_ifname(spec.network.uplink, field="spec.network.uplink")
        if spec.network.secondary_interface:
            check_ifname(spec.network.secondary_interface, field="spec.network.secondary_interface")


IFNAME_BYTES = 15  # Linux's IFNAMSIZ less its NUL


def check_ifname(name: str, *, field: str) -> str:
    """A Linux interface name: 1..15 bytes, no '/', no whitespace, not '.' or '..'."""
    if (
        not 0 < len(name.encode()) <= IFNAME_BYTES
        or "/" in name
        or any(c.isspace() for c in name)
        or (name in (".", ".."))
    ):
        raise BoundError(
            field, f"a network interface name of 1..{IFNAME_BYTES} bytes, no '/' or spaces", name
        )
    return name


def _check_sim(sim: colo_pb2.SimDomainSpec) -> None:
    SIM_PAGES.check(sim.pages)
    SIM_DIRTY_RATE.check(sim.dirty_rate)
    check_enum(sim.pattern, colo_pb2.SimPattern, field="spec.sim.pattern", unset=True)
    if sim.hot_pages > sim.pages:
        raise BoundError("spec.sim.hot_pages", f"0..pages ({sim.pages})", sim.hot_pages)
    SIM_HOT_PERCENT.check(sim.hot_percent)
    # seed: any 64-bit value (0: a random one).
    if sim.service_pages and not 2 <= sim.service_pages < sim.pages:
        raise BoundError(
            "spec.sim.service_pages",
            f"0 (the agent's default) or 2..pages - 1 (2..{sim.pages - 1})",
            sim.service_pages,
            hint="the key-value store needs a header page and a slot page, and must leave guest memory",
        )
    SIM_DIVERGENCE.check(sim.divergence_probability)


def _check_xen_name(name: str, *, field: str) -> None:
    if name.isdigit():
        if not 1 <= int(name) <= DOMID_MAX:
            raise BoundError(field, f"a domid of 1..{DOMID_MAX}", name, hint="dom0 cannot be protected")
    elif not XEN_NAME.fullmatch(name):
        raise BoundError(
            field, "a domid or a name of 1..64 printable characters without space or '/'", repr(name)
        )


# ---- the Agent's role requests -----------------------------------------------------------


def check_role_request(req: colo_pb2.PrepareSecondaryRequest | colo_pb2.StartPrimaryRequest) -> None:
    """PrepareSecondary and StartPrimary: the pair, its spec and the timeouts."""
    check_domain(req.domain)
    check_generation(req.generation)
    check_spec(req.spec)
    if req.spec.domain != req.domain:
        raise BoundError("spec.domain", f"the request's domain ({req.domain})", repr(req.spec.domain))
    check_host(req.peer_host_id, field="peer_host_id", optional=True)
    if isinstance(req, colo_pb2.PrepareSecondaryRequest):
        ACCEPT_TIMEOUT.check(req.accept_timeout)
    else:
        FIRST_BOOT_TIMEOUT.check(req.first_boot_timeout)


# ---- the Coordinator's other requests ----------------------------------------------------


def check_protect(req: colo_pb2.ProtectDomainRequest) -> None:
    check_spec(req.spec)
    check_host(req.primary_host, field="primary_host", optional=True)  # required: the caller says so
    check_host(req.secondary_host, field="secondary_host", optional=True)


def check_failover(req: colo_pb2.FailoverRequest) -> None:
    check_domain(req.domain)
    # expected_generation: any; 0 is "no guard", any other is compared with the pair's.
    check_host(req.new_secondary_host, field="new_secondary_host", optional=True)


def check_list_pairs(req: colo_pb2.ListPairsRequest) -> None:
    _enums(req.states, colo_pb2.PairState, field="states")
    check_host(req.host_id, field="host_id", optional=True)


def check_watch(req: colo_pb2.WatchEventsRequest) -> None:
    if req.domain:
        check_domain(req.domain)
    # history: any; it asks for *up to* that many, and the buffer (20,000) bounds the replay.
    _enums(req.kinds, colo_pb2.EventKind, field="kinds")


def check_registration(req: colo_pb2.RegisterAgentRequest) -> None:
    """RegisterAgent's names and lists (the addresses are parsed by the caller)."""
    check_host(req.host_id, field="host_id")
    if not TOKEN.fullmatch(req.incarnation):
        raise BoundError(
            "incarnation",
            "1..64 printable characters without space (a random id drawn at agent start)",
            repr(req.incarnation),
        )
    check_text(req.service_host, field="service_host", chars=HOSTNAME_CHARS)
    if req.version and not TOKEN.fullmatch(req.version):
        raise BoundError("version", "empty or 1..64 printable characters without space", repr(req.version))
    if len(req.labels) > LABELS:
        raise BoundError("labels", f"at most {LABELS} labels", len(req.labels))
    for key, value in req.labels.items():
        if not key:
            raise BoundError("labels", "keys of 1 or more characters", repr(key))
        check_text(key, field=f"labels key {key[:20]!r}", chars=LABEL_CHARS)
        check_text(value, field=f"labels[{key!r}]", chars=LABEL_CHARS)
    names = list(req.backends) + list(req.unavailable_backends)
    if len(names) > BACKENDS:
        raise BoundError("backends", f"at most {BACKENDS} backends", len(names))
    for name in names:
        if not BACKEND.fullmatch(name):
            raise BoundError("backends", "names of 1..32 lower-case letters, digits, '-' or '_'", repr(name))
    for why in req.unavailable_backends.values():
        check_text(why, field="unavailable_backends", chars=DETAIL_CHARS)


def check_request_checkpoint(req: colo_pb2.RequestCheckpointRequest) -> None:
    check_domain(req.domain)
    check_generation(req.generation)
    check_host(req.host_id, field="host_id")
    check_enum(req.reason, colo_pb2.CheckpointRequestReason, field="reason", unset=True)
    check_text(req.detail, field="detail", chars=DETAIL_CHARS)


def check_report(req: colo_pb2.ReportSyncPointRequest) -> None:
    """A sync-point report's own fields (whether the pair and host agree is the coordinator's)."""
    check_domain(req.domain)
    check_generation(req.generation)
    check_enum(req.control_id, colo_pb2.ControlId, field="control_id", unset=True)
    check_host(req.host_id, field="host_id")
    check_enum(req.role, colo_pb2.Role, field="role", unset=True)
