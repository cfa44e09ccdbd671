"""The Prometheus rules against the code, with promtool doing the reading.

What is ours here is lexical: the selectors a rule's expression names and
the labels it groups by (`selectors`), and every series colo_plane/metrics.py
exposes (`exposed_metrics`).  From them `derived_suite` writes a promtool
test suite that Prometheus evaluates: each selector must match the series
the code exposes (its name, its labels, the label values the code sets;
recording rules evaluated from those series as Prometheus would), each
grouping label must be one a selected series carries, and each $labels.X an
alert's text names must be a label of the alert where the committed tests
fire it."""

from __future__ import annotations

import copy
import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import yaml
from prometheus_client.metrics import MetricWrapperBase

from colo_plane import metrics
from colo_plane._proto import colo_pb2
from colo_plane.agent.syncpoints import Role
from deploycheck import RULE_TESTS, RULES, tools

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


def load(path: Path) -> Any:
    (doc,) = yaml.safe_load_all(path.read_text())
    return doc


def rules(path: Path = RULES) -> list[dict[str, Any]]:
    return [rule for group in load(path)["groups"] for rule in group["rules"]]


def name(rule: dict[str, Any]) -> str:
    return str(rule.get("alert") or rule.get("record"))


# -- what an expression names ---------------------------------------------------------

_TOKEN = re.compile(
    r"""(?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
      | (?P<matchers>\{[^}]*\})
      | (?P<range>\[[^\]]*\])
      | (?P<number>\d+(?:\.\d*)?(?:[eE][+-]?\d+)?(?:ms|[smhdwy])?)
      | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
      | (?P<space>\s+)
      | (?P<op>.)""",
    re.VERBOSE | re.DOTALL,
)
_MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = GROUPING | {"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2"}


@dataclass(frozen=True)
class Selector:
    metric: str
    matchers: tuple[tuple[str, str, str], ...]  # (label, op, value)

    def text(self, *extra: tuple[str, str, str]) -> str:
        inner = ",".join(f'{label}{op}"{value}"' for label, op, value in (*self.matchers, *extra))
        return f"{self.metric}{{{inner}}}"


def selectors(expr: str) -> tuple[list[Selector], list[str]]:
    """The series selectors EXPR names, and the labels it groups or matches
    on (by, without, on, ignoring, group_left/right)."""
    tokens = [(m.lastgroup, m.group(0)) for m in _TOKEN.finditer(expr) if m.lastgroup != "space"]
    found: list[Selector] = []
    grouping: list[str] = []
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        after = tokens[i + 1] if i + 1 < len(tokens) else ("end", "")
        i += 1
        if kind != "ident":
            continue
        if text in GROUPING and after[1] == "(":
            while i < len(tokens) and tokens[i][1] != ")":
                if tokens[i][0] == "ident":
                    grouping.append(tokens[i][1])
                i += 1
        elif text in KEYWORDS or after[1] == "(" or after[1] in ("by", "without"):
            continue  # a keyword, a function or an aggregation
        else:
            block = after[1] if after[0] == "matchers" else ""
            found.append(Selector(text, tuple(_MATCHER.findall(block))))
    return found, grouping


# -- the series the code exposes, as promtool input ------------------------------------


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


def _exists(expr: str) -> dict[str, Any]:
    return {
        "expr": f"count({expr}) > bool 0",
        "eval_time": "10m",
        "exp_samples": [{"labels": "{}", "value": 1}],
    }


def _values(matchers: tuple[tuple[str, str, str], ...]) -> list[tuple[str, str, str]]:
    """label="value" for each value a negative matcher or an alternation
    (a=~"x|y") names: each must be a value the code sets."""
    out = []
    for label, op, value in matchers:
        alternatives = value.split("|")
        if op == "!=":
            out.append((label, "=", value))
        elif op in ("=~", "!~") and all(re.escape(a) == a for a in alternatives):
            out += [(label, "=", a) for a in alternatives]
    return out


def code_checks(rule_list: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each selector of each rule: it matches what the code exposes, and
    so does each value of its matchers alone (a value in an alternation or
    a negative matcher must be one the code sets); for each label the rule
    groups or matches on: one of its selected series carries it."""
    checks = []
    for rule in rule_list:
        found, grouping = selectors(rule["expr"])
        for sel in found:
            checks.append(_exists(sel.text()))
            checks += [_exists(Selector(sel.metric, (m,)).text()) for m in _values(sel.matchers)]
        for label in grouping:
            carrying = " or ".join(sel.text((label, "!=", "")) for sel in found)
            if carrying:
                checks.append(_exists(carrying))
    return checks


# -- the alerts' $labels where they fire ------------------------------------------------

_FIRING = re.compile(r'alertname="([A-Za-z0-9_]+)"')


def template_labels(rule: dict[str, Any]) -> set[str]:
    text = " ".join(str(v) for v in {**rule.get("annotations", {}), **rule.get("labels", {})}.values())
    return set(re.findall(r"\$labels\.([A-Za-z_][A-Za-z0-9_]*)", text))


def firing(case: dict[str, Any]) -> list[tuple[str, str]]:
    """(alert, eval_time) a committed case expects firing."""
    out = []
    for test in case.get("promql_expr_test", []):
        if "ALERTS" in test["expr"]:
            out += [(a, test["eval_time"]) for s in test["exp_samples"] for a in _FIRING.findall(s["labels"])]
    for test in case.get("alert_rule_test", []):
        if test.get("exp_alerts"):
            out.append((test["alertname"], test["eval_time"]))
    return out


def template_checks(case: dict[str, Any], rule_list: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """At each time CASE fires an alert: no firing instance lacks a label its text names."""
    labels = {r["alert"]: template_labels(r) for r in rule_list if "alert" in r}
    return [
        {
            "expr": f'ALERTS{{alertname="{alert}",alertstate="firing",{label}=""}}',
            "eval_time": at,
            "exp_samples": [],
        }
        for alert, at in firing(case)
        for label in sorted(labels.get(alert, ()))
    ]


# -- the suite -------------------------------------------------------------------------


def derived_suite(rules_path: Path, directory: Path, committed: bool = True) -> Path:
    """A promtool test file in DIRECTORY over a copy of RULES_PATH: the code
    checks in a case of their own, the template checks in each committed
    case (whose own tests are kept when COMMITTED)."""
    rule_list = rules(rules_path)
    (directory / RULES.name).write_text(rules_path.read_text())
    suite = copy.deepcopy(load(RULE_TESTS))
    cases = []
    for case in suite["tests"]:
        checks = template_checks(case, rule_list)
        kept = case if committed else {k: v for k, v in case.items() if not k.endswith("_test")}
        if checks or committed:
            cases.append({**kept, "promql_expr_test": [*kept.get("promql_expr_test", []), *checks]})
    cases.append(
        {"interval": "1m", "input_series": code_series(), "promql_expr_test": code_checks(rule_list)}
    )
    suite["tests"] = cases
    path = directory / "derived.test.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


def promtool_problems(rules_path: Path, directory: Path, committed: bool = True) -> str:
    """What promtool says of the derived suite (its quoting undone): empty
    when every check holds."""
    suite = derived_suite(rules_path, directory, committed)
    out = tools.run(["promtool", "test", "rules", suite.name], cwd=directory)
    return "" if out.returncode == 0 else (out.stdout + out.stderr).replace('\\"', '"')


# -- the committed tests' input ----------------------------------------------------------

_SERIES = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)\{(.*)\}$")


def input_problems(suite: dict[str, Any]) -> list[str]:
    """Input series of a promtool suite that the code would not expose:
    another name, other labels, or a label value the code never sets."""
    problems = []
    for case in suite["tests"]:
        for item in case.get("input_series", []):
            m = _SERIES.match(item["series"])
            assert m, f"cannot read input series {item['series']!r}"
            series, labels = m.group(1), dict((k, v) for k, _, v in _MATCHER.findall(m.group(2)))
            want = {**METRICS, **SYNTHETIC}.get(series)
            if want is None:
                problems.append(f"{series}: no such series in colo_plane/metrics.py")
                continue
            if set(labels) != want | TARGET_LABELS:
                problems.append(
                    f"{item['series']}: labels {sorted(labels)}, the code's {sorted(want | TARGET_LABELS)}"
                )
            problems += [
                f"{item['series']}: {k}={v!r} is not a value the code sets"
                for k, v in labels.items()
                if k in LABEL_VALUES and v not in LABEL_VALUES[k]
            ]
    return problems


# -- each daemon's series, and the rules' jobs ----------------------------------------


def job_of(series: str) -> str | None:
    for daemon, group in (("agent", metrics.AGENT), ("coordinator", metrics.COORDINATOR)):
        for collector in group:
            base = collector.describe()[0].name
            if series == base or series.startswith(base + "_"):
                return RULE_JOBS[daemon]
    return None


def scoping_problems(rule_list: list[dict[str, Any]]) -> list[str]:
    """Selectors of one daemon's series that do not name its job."""
    problems = []
    for rule in rule_list:
        for sel in selectors(rule["expr"])[0]:
            job = job_of(sel.metric)
            if job is not None and ("job", "=", job) not in sel.matchers:
                problems.append(f'{name(rule)}: {sel.metric} without job="{job}"')
    return problems
