"""colo_plane.spec: every bound of the table holds at its edges and refuses
just past them, and each refusal names the field and the bound."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message

from colo_plane import spec
from colo_plane._proto import colo_pb2
from colo_plane.agent import domains
from colo_plane.rpc import RpcError
from colo_plane.spec import BoundError


def _spec() -> colo_pb2.DomainSpec:
    return colo_pb2.DomainSpec(domain="vm1", sim=colo_pb2.SimDomainSpec(pages=1024, dirty_rate=100))


def _role(kind: type[Message] = colo_pb2.PrepareSecondaryRequest) -> Any:
    return kind(domain="vm1", generation=1, epoch=1, spec=_spec(), pair_secret=b"s" * 32)


def _target(field: str) -> tuple[Message, Message, str, Callable[[], None]]:
    """For a table field: the request holding it, the message it is set on,
    its name there, and the check to run."""
    if field in ("accept_timeout", "first_boot_timeout"):
        kind = colo_pb2.PrepareSecondaryRequest if field == "accept_timeout" else colo_pb2.StartPrimaryRequest
        role = _role(kind)
        return role, role, field, lambda: spec.check_role_request(role)
    top = _spec()
    *path, name = field.removeprefix("spec.").split(".")
    holder: Message = top
    for part in path:
        holder = getattr(holder, part)
    return top, holder, name, lambda: spec.check_spec(top)


def _refusal(check: Callable[[], None]) -> BoundError:
    with pytest.raises(BoundError) as err:
        check()
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    return err.value


# ---- the table, edge by edge -------------------------------------------------------------


def _range_cases() -> list[Any]:
    out = []
    for r in spec.RANGES:
        step = 0.001 if isinstance(r.high, float) else 1
        out.append(pytest.param(r, r.low, True, id=f"{r.field}={r.low}"))
        out.append(pytest.param(r, r.high, True, id=f"{r.field}={r.high}"))
        out.append(pytest.param(r, r.high + step, False, id=f"{r.field}={r.high + step}"))
        if r.low - step >= 0 or isinstance(r.low, float):
            below = r.low - step
            out.append(pytest.param(r, below, r.default and below == 0, id=f"{r.field}={below}"))
    return out


@pytest.mark.parametrize(("bound", "value", "ok"), _range_cases())
def test_ranges(bound: spec.Range, value: float, ok: bool) -> None:
    _, holder, name, check = _target(bound.field)
    if name == "pages":  # the other sim fields are bounded by pages: make room for the highest
        holder.hot_pages = 0  # type: ignore[attr-defined]
    setattr(holder, name, value)
    if ok:
        check()
    else:
        err = _refusal(check)
        assert err.field == bound.field and err.bound == bound.bound
        assert bound.field in err.message and bound.bound in err.message


def _span_cases() -> list[Any]:
    out = []
    for s in spec.SPANS:
        out += [
            pytest.param(s, s.low, True, id=f"{s.field}=low"),
            pytest.param(s, s.high, True, id=f"{s.field}=high"),
            pytest.param(s, s.low - 1, False, id=f"{s.field}=low-1ns"),
            pytest.param(s, s.high + 1, False, id=f"{s.field}=high+1ns"),
            pytest.param(s, -s.low, False, id=f"{s.field}=negative"),
            pytest.param(s, 0, True, id=f"{s.field}=unset"),
        ]
    return out


@pytest.mark.parametrize(("bound", "ns", "ok"), _span_cases())
def test_spans(bound: spec.Span, ns: int, ok: bool) -> None:
    _, holder, name, check = _target(bound.field)
    if ns:
        getattr(holder, name).FromNanoseconds(ns)
    if ok:
        check()
    else:
        err = _refusal(check)
        assert err.field == bound.field and bound.bound in err.message, err.message


def test_the_issue_s_examples_name_field_and_bound() -> None:
    s = _spec()
    s.checkpoint_timeout.FromNanoseconds(1)
    assert (
        "spec.checkpoint_timeout must be unset (the default) or 100 ms..10 min, got 1 ns"
        in _refusal(lambda: spec.check_spec(s)).message
    )
    s = _spec()
    s.checkpoint_interval.FromSeconds(10**9)
    assert "or 10 ms..1 h, got 1000000000 s" in _refusal(lambda: spec.check_spec(s)).message
    s = _spec()
    s.sim.pages = 1 << 24
    assert (
        "spec.sim.pages must be 1..1048576 pages (4 GiB), got 16777216"
        in _refusal(lambda: spec.check_spec(s)).message
    )


# ---- the bounds that depend on another field, and the names ------------------------------


def _with(**fields: Any) -> Callable[[], None]:
    s = _spec()
    for path, value in fields.items():
        *parts, name = path.split("__")
        holder: Any = s
        for part in parts:
            holder = getattr(holder, part)
        setattr(holder, name, value)
    return lambda: spec.check_spec(s)


@pytest.mark.parametrize(
    ("check", "field", "bound"),
    [
        (_with(sim__service_pages=1024), "spec.sim.service_pages", "2..pages - 1 (2..1023)"),
        (_with(sim__service_pages=1), "spec.sim.service_pages", "2..pages - 1"),
        (_with(sim__hot_pages=1025), "spec.sim.hot_pages", "0..pages (1024)"),
        (_with(sim__pattern=7), "spec.sim.pattern", "SIM_PATTERN_HOT_SET"),
        (_with(sim__divergence_probability=float("nan")), "spec.sim.divergence_probability", "0.0..1.0"),
        (_with(domain="bad name!"), "spec.domain", "1..63 letters"),
        (_with(domain="x" * 64), "spec.domain", "1..63 letters"),
        (lambda: spec.check_spec(colo_pb2.DomainSpec(domain="vm1")), "spec.backend", "sim or xen"),
        (
            lambda: spec.check_spec(colo_pb2.DomainSpec(domain="vm1", xen=colo_pb2.XenDomainSpec())),
            "spec.xen.name",
            "1..64 printable",
        ),
        (
            lambda: spec.check_spec(colo_pb2.DomainSpec(domain="vm1", xen=colo_pb2.XenDomainSpec(name="0"))),
            "spec.xen.name",
            "a domid of 1..32751",
        ),
        (
            lambda: spec.check_spec(
                colo_pb2.DomainSpec(domain="vm1", xen=colo_pb2.XenDomainSpec(name="g", secondary_name="a/b"))
            ),
            "spec.xen.secondary_name",
            "without space or '/'",
        ),
        (
            lambda: spec.check_protect(colo_pb2.ProtectDomainRequest(spec=_spec(), primary_host="a b")),
            "primary_host",
            "1..253 letters",
        ),
        (
            lambda: spec.check_protect(
                colo_pb2.ProtectDomainRequest(spec=_spec(), primary_host="a", secondary_host="h" * 254)
            ),
            "secondary_host",
            "empty or 1..253",
        ),
        (
            lambda: spec.check_role_request(
                colo_pb2.PrepareSecondaryRequest(
                    domain="vm2", generation=1, spec=_spec(), pair_secret=b"s" * 32
                )
            ),
            "spec.domain",
            "the request's domain (vm2)",
        ),
        (
            lambda: spec.check_role_request(
                colo_pb2.StartPrimaryRequest(domain="vm1", generation=0, spec=_spec())
            ),
            "generation",
            "1 or more",
        ),
        (lambda: spec.check_watch(colo_pb2.WatchEventsRequest(kinds=[99])), "kinds", "one of EVENT_KIND_"),
        (lambda: spec.check_watch(colo_pb2.WatchEventsRequest(domain="a b")), "domain", "1..63 letters"),
        (lambda: spec.check_list_pairs(colo_pb2.ListPairsRequest(states=[0])), "states", "PAIR_STATE_"),
        (
            lambda: spec.check_failover(colo_pb2.FailoverRequest(domain="vm1", new_secondary_host=" ")),
            "new_secondary_host",
            "empty or 1..253",
        ),
        (
            lambda: spec.check_registration(colo_pb2.RegisterAgentRequest(host_id="h", incarnation="")),
            "incarnation",
            "1..64 printable",
        ),
        (
            lambda: spec.check_registration(
                colo_pb2.RegisterAgentRequest(
                    host_id="h", incarnation="i", labels={f"k{i}": "v" for i in range(33)}
                )
            ),
            "labels",
            "at most 32 labels",
        ),
        (
            lambda: spec.check_registration(
                colo_pb2.RegisterAgentRequest(host_id="h", incarnation="i", labels={"zone": "a" * 129})
            ),
            "labels['zone']",
            "at most 128 printable",
        ),
        (
            lambda: spec.check_registration(
                colo_pb2.RegisterAgentRequest(host_id="h", incarnation="i", backends=["Sim!"])
            ),
            "backends",
            "lower-case letters",
        ),
        (
            lambda: spec.check_request_checkpoint(
                colo_pb2.RequestCheckpointRequest(domain="vm1", generation=1, host_id="h", detail="x" * 1025)
            ),
            "detail",
            "at most 1024 printable",
        ),
        (
            lambda: spec.check_report(
                colo_pb2.ReportSyncPointRequest(domain="vm1", generation=1, host_id="h", control_id=7)  # type: ignore[arg-type]
            ),
            "control_id",
            "CONTROL_ID_SECONDARY_RESUMED",
        ),
        (
            lambda: spec.check_report(colo_pb2.ReportSyncPointRequest(domain="vm1", generation=1)),
            "host_id",
            "1..253 letters",
        ),
    ],
)
def test_dependent_bounds_and_names(check: Callable[[], None], field: str, bound: str) -> None:
    err = _refusal(check)
    assert err.field == field and bound in err.bound, (err.field, err.bound)
    assert err.message.startswith(f"{field} must be "), err.message


@pytest.mark.parametrize(
    "ok",
    [
        _with(sim__service_pages=2),
        _with(sim__service_pages=1023),
        _with(sim__hot_pages=1024, sim__hot_percent=100, sim__pattern=colo_pb2.SIM_PATTERN_HOT_SET),
        _with(sim__seed=2**64 - 1),
        _with(domain="a" * 63),
        lambda: spec.check_spec(colo_pb2.DomainSpec(domain="vm1", xen=colo_pb2.XenDomainSpec(name="32751"))),
        lambda: spec.check_spec(
            colo_pb2.DomainSpec(domain="vm1", xen=colo_pb2.XenDomainSpec(name="guest-1"))
        ),
        lambda: spec.check_report(
            colo_pb2.ReportSyncPointRequest(domain="vm1", generation=2**64 - 1, host_id="host-a")
        ),  # how high is the coordinator's to judge: never issued
        lambda: spec.check_watch(colo_pb2.WatchEventsRequest(history=100_000)),  # up to: the buffer caps it
        lambda: spec.check_registration(
            colo_pb2.RegisterAgentRequest(
                host_id="fake-001", incarnation="0" * 32, backends=["sim"], labels={"zone": "a", "rack": "r1"}
            )
        ),
    ],
)
def test_values_within_bounds_pass(ok: Callable[[], None]) -> None:
    ok()


def test_a_bound_error_is_an_rpc_error() -> None:
    """Every servicer already turns an RpcError into its status, and counts it by reason."""
    err = _refusal(_with(sim__pages=0))
    assert isinstance(err, RpcError) and err.reason == colo_pb2.ERROR_REASON_INVALID_FIELD and err.got == 0
    assert err.metadata == {"field": "spec.sim.pages"}


# ---- the agent's own limit: its free memory ----------------------------------------------


def _meminfo(tmp_path: Path, kib: int) -> Path:
    path = tmp_path / "meminfo"
    path.write_text(f"MemTotal:       99999999 kB\nMemFree:         1 kB\nMemAvailable:   {kib} kB\n")
    return path


def test_a_sim_domain_takes_at_most_half_of_the_available_memory(tmp_path: Path) -> None:
    meminfo = _meminfo(tmp_path, 8 * 1024)  # 8 MiB available: a domain of at most 4 MiB
    domains.check_room(1024, meminfo=meminfo)  # 1024 pages: 4 MiB
    with pytest.raises(RpcError) as err:
        domains.check_room(1025, meminfo=meminfo)
    assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "8 MiB available" in err.value.message and "fewer pages" in err.value.message


def test_open_domain_refuses_what_does_not_fit_before_allocating(tmp_path: Path) -> None:
    with pytest.raises(RpcError) as err:
        domains.open_domain(_spec(), "host-a", secondary=True, meminfo=_meminfo(tmp_path, 4096))
    assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    with domains.open_domain(_spec(), "host-a", secondary=True, meminfo=_meminfo(tmp_path, 1 << 20)) as dom:
        assert dom.pages == 1024


def test_no_meminfo_means_no_memory_check(tmp_path: Path) -> None:
    assert domains.mem_available(tmp_path / "absent") is None
    domains.check_room(1 << 20, meminfo=tmp_path / "absent")
