"""How the client commands show pairs, agents and events: tables for
people, JSON (the proto's JSON mapping) for scripts."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import Message

from colo_plane._proto import colo_pb2


def as_json(message: Message) -> str:
    return json.dumps(json_format.MessageToDict(message, preserving_proto_field_name=True), sort_keys=True)


def _enum(enum_type: object, value: int, prefix: str) -> str:
    name: str = enum_type.Name(value)  # type: ignore[attr-defined]
    return name.removeprefix(prefix)


def _pending(p: colo_pb2.Pair) -> str:
    return "in flight" if p.state == colo_pb2.PAIR_STATE_CHECKPOINTING else "armed"


def state(value: int) -> str:
    return _enum(colo_pb2.PairState, value, "PAIR_STATE_")


def _ago(ts: timestamp_pb2.Timestamp) -> str:
    if not ts.seconds and not ts.nanos:
        return "-"
    age = time.time() - (ts.seconds + ts.nanos / 1e9)
    if age < 60:
        return f"{age:.1f}s ago"
    if age < 3600:
        return f"{age / 60:.0f}m ago"
    return f"{age / 3600:.1f}h ago"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


def pairs(items: Sequence[colo_pb2.Pair]) -> str:
    rows = [
        (
            p.domain,
            state(p.state),
            p.generation,
            p.epoch,
            p.primary_host or "-",
            p.secondary_host or "-",
            _ago(p.last_checkpoint_time),
            p.last_error[:60] or "",
        )
        for p in items
    ]
    return table(
        ("DOMAIN", "STATE", "GEN", "EPOCH", "PRIMARY", "SECONDARY", "LAST CHECKPOINT", "ERROR"), rows
    )


def pair(p: colo_pb2.Pair) -> str:
    c = p.checkpoint_counts
    s = p.last_checkpoint
    lines = [
        f"domain:           {p.domain}",
        f"state:            {state(p.state)} (since {_ago(p.state_since)})",
        f"generation:       {p.generation}",
        f"epoch:            {p.epoch}" + (f" ({_pending(p)}: {p.pending_epoch})" if p.pending_epoch else ""),
        f"primary:          {p.primary_host or '-'}",
        f"secondary:        {p.secondary_host or '-'}",
        f"service:          {p.service_endpoint or '-'}",
        f"checkpoints:      request {c.request}, timer {c.timer}, manual {c.manual}, "
        f"first boot {c.first_boot}, "
        f"failed {c.failed}",
        f"last checkpoint:  {_ago(p.last_checkpoint_time)}: {s.pages} pages, {s.bytes} bytes, "
        f"paused {s.pause_ns / 1e6:.2f} ms, took {s.duration_ns / 1e6:.2f} ms",
        f"divergences:      {p.divergences}",
        f"failovers:        {p.failovers}",
    ]
    spec = p.spec
    if spec.WhichOneof("backend") == "sim":
        sim = spec.sim
        lines.append(
            f"spec:             sim, {sim.pages} pages, dirty rate {sim.dirty_rate}/s, verify "
            f"{'on' if spec.verify else 'off'}"
        )
    elif spec.WhichOneof("backend") == "xen":
        lines.append(f"spec:             xen domain {spec.xen.name}")
    if p.last_error:
        lines.append(f"last error:       {p.last_error} ({_ago(p.last_error_time)})")
    return "\n".join(lines)


def agents(items: Sequence[colo_pb2.AgentInfo]) -> str:
    rows = []
    for a in items:
        roles = ", ".join(f"{r.domain}({'P' if r.role == colo_pb2.ROLE_PRIMARY else 'S'})" for r in a.roles)
        labels = ",".join(f"{k}={v}" for k, v in sorted(a.labels.items()))
        status = ("alive" if a.alive else "LOST") + (", draining" if a.draining else "")
        rows.append(
            (
                a.host_id,
                status,
                a.grpc_address,
                labels or "-",
                ",".join(a.backends),
                _ago(a.last_heartbeat),
                roles or "-",
            )
        )
    return table(("HOST", "STATUS", "ADDRESS", "LABELS", "BACKENDS", "HEARTBEAT", "ROLES"), rows)


def event(e: colo_pb2.Event) -> str:
    when = time.strftime("%H:%M:%S", time.localtime(e.time.seconds)) + f".{e.time.nanos // 1_000_000:03d}"
    kind = _enum(colo_pb2.EventKind, e.kind, "EVENT_KIND_")
    parts = [when, f"#{e.sequence}", kind]
    if e.domain:
        parts.append(f"{e.domain} gen {e.generation} epoch {e.epoch}")
    if e.kind == colo_pb2.EVENT_KIND_STATE_CHANGED:
        parts.append(f"{state(e.from_state)} -> {state(e.to_state)}")
    if e.trigger:
        parts.append(_enum(colo_pb2.CheckpointTrigger, e.trigger, "CHECKPOINT_TRIGGER_").lower())
    if e.cause:
        parts.append(_enum(colo_pb2.FailoverCause, e.cause, "FAILOVER_CAUSE_").lower())
    if e.HasField("control_id"):
        parts.append(_enum(colo_pb2.ControlId, e.control_id, "CONTROL_ID_"))
    if e.host_id:
        parts.append(f"host {e.host_id}")
    if e.message:
        parts.append(f"-- {e.message}")
    return " ".join(parts)


def drain(resp: colo_pb2.DrainHostResponse) -> str:
    rows = [
        (
            m.domain,
            "primary" if m.role == colo_pb2.ROLE_PRIMARY else "secondary",
            _enum(colo_pb2.DrainAction, m.action, "DRAIN_ACTION_").lower(),
            m.to_host or "-",
            "done" if m.done else ("FAILED: " + m.error if m.error else "started"),
        )
        for m in resp.moves
    ]
    out = table(("DOMAIN", "ROLE", "ACTION", "TO", "STATUS"), rows) if rows else "no roles to move"
    return f"{out}\n{resp.host_id}: {resp.remaining_roles} role(s) remaining"
