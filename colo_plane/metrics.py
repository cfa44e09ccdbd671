"""Every Prometheus metric of colo-plane, defined in one place.

Names follow Prometheus conventions: prefix ``colo_``, base units in the
name, ``_total`` on counters.  Buckets fit what is measured: a checkpoint
takes milliseconds, so the defaults (up to 10 s) would waste resolution.
"""

from __future__ import annotations

import contextlib

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
)
from prometheus_client.metrics import MetricWrapperBase

from colo_plane import __version__

# 100 us .. 10 s: pause and checkpoint times.
MS_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
# 1 .. 16M pages: dirty set sizes.
PAGE_BUCKETS = tuple(float(4**i) for i in range(13))

BUILD_INFO = Info("colo_build", "colo-plane build")
BUILD_INFO.info({"version": __version__})

# ---- data plane (agents) -------------------------------------------------------

CHECKPOINT_DURATION = Histogram(
    "colo_checkpoint_duration_seconds",
    "Whole checkpoint on this side: request to SECONDARY_RESUMED",
    ["role", "domain"],
    buckets=MS_BUCKETS,
)
CHECKPOINT_PAUSE = Histogram(
    "colo_checkpoint_pause_seconds",
    "Time this side's guest was paused for a checkpoint",
    ["role", "domain"],
    buckets=MS_BUCKETS,
)
CHECKPOINTS = Counter("colo_agent_checkpoints_total", "Checkpoints run by this agent", ["role", "result"])
PAGES_SENT = Counter("colo_pages_sent_total", "Guest pages sent on data streams")
BYTES_SENT = Counter("colo_stream_sent_bytes_total", "Stream bytes sent, framing included", ["domain"])
PAGES_RECEIVED = Counter("colo_pages_received_total", "Guest pages applied from data streams")
BYTES_RECEIVED = Counter(
    "colo_stream_received_bytes_total", "Stream bytes received, framing included", ["domain"]
)
DIRTY_PAGES = Histogram(
    "colo_dirty_pages",
    "Dirty set sizes per checkpoint: A (primary), B (secondary), D = A | B (sent)",
    ["set"],
    buckets=PAGE_BUCKETS,
)
SYNC_POINTS = Counter("colo_sync_points_total", "Sync points sent by this agent", ["control_id"])
SYNC_REPORTS_DROPPED = Counter(
    "colo_sync_reports_dropped_total",
    "Sync-point reports never written to the coordinator (queue full, or still queued at shutdown)",
)
SYNC_REPORTS_UNCONFIRMED = Counter(
    "colo_sync_reports_unconfirmed_total",
    "Sync-point reports written to a ReportSyncPoints stream that broke before the coordinator "
    "answered: each may or may not have arrived",
)
HANDSHAKE_FAILURES = Counter(
    "colo_data_handshake_failures_total",
    "Data connections refused before any record",
    ["reason"],
)
STREAM_ERRORS = Counter("colo_stream_errors_total", "Data streams ended by an error", ["code"])
VERIFY_FAILURES = Counter(
    "colo_verify_failures_total", "Checkpoints whose secondary did not equal the primary (verify mode)"
)
VERIFY_CHECKS = Counter("colo_verify_checks_total", "Checkpoints verified (verify mode)")
FENCED = Counter("colo_fenced_total", "Commands or records refused for an older generation", ["what"])
NIC_COMPARES = Counter(
    "colo_nic_compares_total",
    "NIC proxy output frames by protocol and compare result (equal, passed, mismatch, timeout, uncomparable)",
    ["protocol", "result"],
)
PROXY_REQUESTS = Counter("colo_proxy_requests_total", "Client requests through the COLO proxy (primary)")
DIVERGENCES = Counter(
    "colo_divergences_total",
    "Replies of primary and secondary that differed, or the secondary's missing",
    ["kind", "domain"],
)
PROXY_BACKPRESSURE = Counter(
    "colo_proxy_backpressure_total",
    "Times the COLO proxy stopped reading a client whose unsent replies reached the bound",
)
PROXY_CLIENTS_PAUSED = Gauge(
    "colo_proxy_clients_paused", "Proxy clients not read now: their unsent replies reached the bound"
)
PROXY_OUTPUT_BYTES = Gauge(
    "colo_proxy_output_bytes", "Reply bytes the proxy owes its clients and no socket took yet (held ones too)"
)
DOMAINS_HELD = Gauge("colo_agent_domains", "Domains this agent holds", ["role"])

# ---- gRPC servers (both daemons; names as go-grpc-prometheus) -------------------

GRPC_STARTED = Counter(
    "grpc_server_started_total",
    "RPCs started on the server",
    ["grpc_type", "grpc_service", "grpc_method"],
)
GRPC_HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, by status code (aborted ones too)",
    ["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
)
GRPC_HANDLING = Histogram(
    "grpc_server_handling_seconds",
    "Time to handle an RPC, until its status is sent",
    ["grpc_type", "grpc_service", "grpc_method"],
    buckets=MS_BUCKETS,
)

# ---- coordinator ----------------------------------------------------------------

# 50 us .. 10 s: control-path latencies (request -> issued is sub-millisecond).
CONTROL_BUCKETS = (0.00005, *MS_BUCKETS)
PAIRS = Gauge("colo_pairs", "Pairs the coordinator manages, by state", ["state"])
COORD_CHECKPOINTS = Counter(
    "colo_checkpoints_total", "Checkpoints completed (SECONDARY_RESUMED), by trigger", ["trigger"]
)
COORD_CHECKPOINTS_FAILED = Counter(
    "colo_checkpoints_failed_total",
    "Checkpoints that failed or missed their deadline, by trigger",
    ["trigger"],
)
CHECKPOINT_REQUESTS = Counter(
    "colo_checkpoint_requests_total",
    "Checkpoint requests received (RequestCheckpoint, Checkpoint)",
    ["trigger", "coalesced"],
)
SYNC_REPORTS_REFUSED = Counter(
    "colo_sync_reports_refused_total",
    "Sync-point reports refused (ReportSyncPoint calls, ReportSyncPoints messages), by reason: "
    "unknown_host, future_generation, not_pair_host, else the status code in lower case",
    ["reason"],
)
FAILOVERS = Counter("colo_failovers_total", "Failovers and role losses, by cause", ["cause", "domain"])
PAIR_STATE = Gauge(
    "colo_pair_state", "1 for each pair's current state (one series a pair)", ["domain", "state"]
)
STORE_ERRORS = Counter(
    "colo_store_errors_total",
    "Coordinator store writes that failed (SQLite), by what: pairs, agent",
    ["what"],
)
AGENTS_ALIVE = Gauge("colo_agents_alive", "Agents whose heartbeats arrive in time")
AGENTS_KNOWN = Gauge("colo_agents", "Agents the coordinator knows, alive or not")
COMMAND_PATH_LOST = Counter(
    "colo_agent_command_path_lost_total",
    "Agents declared lost because commands stopped reaching them while their heartbeats arrived "
    "(a one-way partition)",
)
AGENTS_LOST = Counter(
    "colo_agents_lost_total",
    "Agents declared lost, by the evidence: refused (its port refuses connections), silent (no "
    "heartbeat for longer than its learned timeout and no answer), command_path (calls kept failing "
    "while its heartbeats arrived)",
    ["reason"],
)
AGENT_FLAPPING = Gauge(
    "colo_agent_flapping",
    "1 while the host has been lost 3 times or more in 10 minutes: it takes no new role and is "
    "suspected later",
    ["host_id"],
)
AGENT_TIMEOUT = Gauge(
    "colo_agent_failure_timeout_seconds",
    "The silence after which the host is suspected, learned from its heartbeats (phi-accrual)",
    ["host_id"],
)
REQUEST_TO_ISSUE = Histogram(
    "colo_checkpoint_request_to_issue_seconds",
    "Control path: checkpoint wanted (request, on-demand call, timer) to Agent.Checkpoint sent",
    ["trigger"],
    buckets=CONTROL_BUCKETS,
)
ISSUE_TO_RESUMED = Histogram(
    "colo_checkpoint_issue_to_resumed_seconds",
    "Control path: Agent.Checkpoint sent (armed: CHECKPOINT_REQUEST sent) to its SECONDARY_RESUMED",
    buckets=CONTROL_BUCKETS,
)

# ---- which daemon exposes what -----------------------------------------------------

# Each daemon's /metrics serves its own families and the shared ones, never
# the other daemon's: an agent exporting colo_agents_alive 0 kept
# absent(colo_agents_alive) false while the coordinator was down.
COMMON: tuple[MetricWrapperBase, ...] = (BUILD_INFO, GRPC_STARTED, GRPC_HANDLED, GRPC_HANDLING)
AGENT: tuple[MetricWrapperBase, ...] = (
    CHECKPOINT_DURATION,
    CHECKPOINT_PAUSE,
    CHECKPOINTS,
    PAGES_SENT,
    BYTES_SENT,
    PAGES_RECEIVED,
    BYTES_RECEIVED,
    DIRTY_PAGES,
    SYNC_POINTS,
    SYNC_REPORTS_DROPPED,
    SYNC_REPORTS_UNCONFIRMED,
    HANDSHAKE_FAILURES,
    STREAM_ERRORS,
    VERIFY_FAILURES,
    VERIFY_CHECKS,
    FENCED,
    PROXY_REQUESTS,
    NIC_COMPARES,
    DIVERGENCES,
    PROXY_BACKPRESSURE,
    PROXY_CLIENTS_PAUSED,
    PROXY_OUTPUT_BYTES,
    DOMAINS_HELD,
)
COORDINATOR: tuple[MetricWrapperBase, ...] = (
    PAIRS,
    COORD_CHECKPOINTS,
    COORD_CHECKPOINTS_FAILED,
    CHECKPOINT_REQUESTS,
    SYNC_REPORTS_REFUSED,
    FAILOVERS,
    PAIR_STATE,
    STORE_ERRORS,
    AGENTS_ALIVE,
    AGENTS_KNOWN,
    COMMAND_PATH_LOST,
    AGENTS_LOST,
    AGENT_FLAPPING,
    AGENT_TIMEOUT,
    REQUEST_TO_ISSUE,
    ISSUE_TO_RESUMED,
)


def registry(daemon: str) -> CollectorRegistry:
    """What `colo DAEMON --metrics-listen` serves: its families, the shared
    ones and the process's own (CPU, memory, GC)."""
    own = {"agent": AGENT, "coordinator": COORDINATOR}[daemon]
    reg = CollectorRegistry(auto_describe=True)
    for collector in (*COMMON, *own, PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        reg.register(collector)
    return reg


# ---- every known label set from the start --------------------------------------------


# A counter child that appears only at its first event appears at 1, and
# increase() reads that first failover, store error or failed handshake as
# 0: the alerts on them stay silent.  Each label set the code can set is
# therefore exported at 0 from the daemon's start.
def _enum_names(enum: EnumTypeWrapper, prefix: str) -> tuple[str, ...]:
    names = enum.keys()
    return tuple(n.removeprefix(prefix) for n in names if not n.endswith("UNSPECIFIED"))


def initialise(daemon: str) -> None:
    """Creates every known label set of the daemon's labelled counters at 0."""
    from colo_plane._proto import colo_pb2

    triggers = tuple(t.lower() for t in _enum_names(colo_pb2.CheckpointTrigger, "CHECKPOINT_TRIGGER_"))
    if daemon == "coordinator":
        states = _enum_names(colo_pb2.PairState, "PAIR_STATE_")
        sets: list[tuple[MetricWrapperBase, list[tuple[str, ...]]]] = [
            (STORE_ERRORS, [("pairs",), ("agent",)]),
            (COORD_CHECKPOINTS, [(t,) for t in triggers]),
            (COORD_CHECKPOINTS_FAILED, [(t,) for t in triggers]),
            (CHECKPOINT_REQUESTS, [(t, c) for t in triggers for c in ("true", "false")]),
            (AGENTS_LOST, [("refused",), ("silent",), ("command_path",)]),
            (
                SYNC_REPORTS_REFUSED,
                [
                    (r,)
                    for r in (
                        "not_found",
                        "invalid_argument",
                        "unknown_host",
                        "failed_precondition",
                        "future_generation",
                        "not_pair_host",
                    )
                ],
            ),
            (PAIRS, [(s,) for s in states]),
        ]
    else:
        sets = [
            (
                HANDSHAKE_FAILURES,
                [(r,) for r in ("closed", "garbage", "bad_proof", "refused", "timeout", "unknown_pair")],
            ),
            (FENCED, [("command",), ("record",)]),
            (CHECKPOINTS, [(r, o) for r in ("primary", "secondary") for o in ("ok", "mismatch")]),
            (DOMAINS_HELD, [("primary",), ("secondary",)]),
        ]
    for metric, label_sets in sets:
        for labels in label_sets:
            metric.labels(*labels)


# ---- per-domain series (docs/operations.md, "Cardinality") ----------------------------

_AGENT_DOMAIN: tuple[tuple[MetricWrapperBase, tuple[tuple[str, ...], ...]], ...] = (
    (CHECKPOINT_PAUSE, (("primary",), ("secondary",))),
    (CHECKPOINT_DURATION, (("primary",), ("secondary",))),
    (DIVERGENCES, (("mismatch",), ("timeout",))),
    (BYTES_SENT, ((),)),
    (BYTES_RECEIVED, ((),)),
)


def _failover_causes() -> tuple[str, ...]:
    from colo_plane._proto import colo_pb2

    return tuple(c.lower() for c in _enum_names(colo_pb2.FailoverCause, "FAILOVER_CAUSE_"))


def domain_held(domain: str, role: str) -> None:
    """An agent took a domain: its counters exist at 0 from now on."""
    DIVERGENCES.labels("mismatch", domain)
    DIVERGENCES.labels("timeout", domain)
    BYTES_SENT.labels(domain)
    BYTES_RECEIVED.labels(domain)
    CHECKPOINT_PAUSE.labels(role, domain)
    CHECKPOINT_DURATION.labels(role, domain)


def domain_released(domain: str) -> None:
    """An agent let a domain go: its series go too (a host's series follow the
    domains it holds, not every domain it ever held)."""
    for metric, prefixes in _AGENT_DOMAIN:
        for prefix in prefixes:
            with contextlib.suppress(KeyError):
                metric.remove(*prefix, domain)


def pair_known(domain: str) -> None:
    """The coordinator has a pair: its failover counters exist at 0 by cause."""
    for cause in _failover_causes():
        FAILOVERS.labels(cause, domain)


def pair_state(domain: str, old: str, new: str) -> None:
    if old:
        with contextlib.suppress(KeyError):
            PAIR_STATE.remove(domain, old)
    PAIR_STATE.labels(domain, new).set(1)
