"""Every series colo_plane/metrics.py exposes, with its labels and the
values the code sets them to, the job that exports it, and the lot as
promtool input series."""

from __future__ import annotations

import itertools
from typing import Any

import grpc
from prometheus_client.metrics import MetricWrapperBase

from colo_plane import metrics
from colo_plane._proto import colo_pb2
from colo_plane.agent.syncpoints import Role

# The job names the rules match on; the pods' app.kubernetes.io/name labels,
# the Operator's monitors (jobLabel) and the example scrape configs give them.
RULE_JOBS = {"coordinator": "colo-coordinator", "agent": "colo-agent"}
# Labels Prometheus attaches to every scraped series.
TARGET_LABELS = frozenset({"job", "instance"})
# Series Prometheus makes itself.
SYNTHETIC = {"up": frozenset[str]()}


def exposed_metrics() -> dict[str, frozenset[str]]:
    """Every series name colo_plane/metrics.py exposes, with its labels: the
    suffixes prometheus_client adds per type, `le` on histogram buckets."""
    out: dict[str, frozenset[str]] = {}
    for obj in vars(metrics).values():
        if not isinstance(obj, MetricWrapperBase):
            continue
        family = obj.describe()[0]
        base, kind = family.name, family.type
        labels = frozenset(obj._labelnames)  # no public accessor
        if kind == "counter":
            out[base + "_total"] = out[base + "_created"] = labels
        elif kind == "gauge":
            out[base] = labels
        elif kind == "histogram":
            out[base + "_bucket"] = labels | {"le"}
            out[base + "_sum"] = out[base + "_count"] = out[base + "_created"] = labels
        elif kind == "info":
            for fam in obj.collect():
                for sample in fam.samples:
                    out[sample.name] = labels | frozenset(sample.labels)
        else:
            raise AssertionError(f"{base}: metric type {kind} is not handled here: add its suffixes")
    return out


METRICS = exposed_metrics()


def _names(enum: Any, prefix: str) -> set[str]:
    return {n.removeprefix(prefix) for n in enum.keys() if not n.endswith("UNSPECIFIED")}  # noqa: SIM118


# The values some labels can take, from the code that sets them.
LABEL_VALUES: dict[str, set[str]] = {
    "state": _names(colo_pb2.PairState, "PAIR_STATE_"),  # statemachine.state_name
    "trigger": {n.lower() for n in _names(colo_pb2.CheckpointTrigger, "CHECKPOINT_TRIGGER_")},
    "cause": {n.lower() for n in _names(colo_pb2.FailoverCause, "FAILOVER_CAUSE_")},
    "role": {r.value for r in Role},
    "grpc_service": {s.full_name for s in colo_pb2.DESCRIPTOR.services_by_name.values()}
    | {"grpc.health.v1.Health"},
    "grpc_method": {m.name for s in colo_pb2.DESCRIPTOR.services_by_name.values() for m in s.methods}
    | {"Check", "Watch"},
    "grpc_code": {c.name for c in grpc.StatusCode},
    "job": set(RULE_JOBS.values()),
}
BUCKETS = ("0.1", "+Inf")


def _jobs(series: str) -> list[str]:
    for group, daemons in ((metrics.AGENT, ["agent"]), (metrics.COORDINATOR, ["coordinator"])):
        if any(
            series == c.describe()[0].name or series.startswith(c.describe()[0].name + "_") for c in group
        ):
            return [RULE_JOBS[d] for d in daemons]
    return list(RULE_JOBS.values())  # COMMON, and `up`


def code_series() -> list[dict[str, str]]:
    """One promtool input series per value of each label of each exposed
    series (the others at their first value), under the job that exports it:
    every (series, label, value) the code can produce, once."""
    out = []
    for series, labels in sorted({**METRICS, **SYNTHETIC}.items()):
        choices = {
            label: sorted(BUCKETS if label == "le" else LABEL_VALUES.get(label, {f"some-{label}"}))
            for label in sorted(labels)
        }
        combos = [{k: v[0] for k, v in choices.items()}]
        combos += [{**combos[0], k: value} for k, v in choices.items() for value in v[1:]]
        for job, combo in itertools.product(_jobs(series), combos):
            matchers = ",".join(f'{k}="{v}"' for k, v in {"job": job, "instance": "i:1", **combo}.items())
            out.append({"series": f"{series}{{{matchers}}}", "values": "1+1x10"})
    return out


def job_of(series: str) -> str | None:
    for daemon, group in (("agent", metrics.AGENT), ("coordinator", metrics.COORDINATOR)):
        for collector in group:
            base = collector.describe()[0].name
            if series == base or series.startswith(base + "_"):
                return RULE_JOBS[daemon]
    return None
