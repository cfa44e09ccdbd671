"""deploy/ kept true to the code: every YAML file parses, every `colo` flag
the manifests, unit files and docs/deploy.md use exists in the CLI's
argparse, the ports agree with the flags, and every metric and label the
Prometheus rules name exists in colo_plane/metrics.py."""

from __future__ import annotations

import argparse
import contextlib
import io
import ipaddress
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from colo_plane import __version__, addresses, cli, metrics
from colo_plane._proto import colo_pb2
from colo_plane.agent import server as agent_server
from colo_plane.agent.syncpoints import Role
from colo_plane.coordinator import server as coordinator_server

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBE = DEPLOY / "kubernetes"
SYSTEMD = DEPLOY / "systemd"
PROMETHEUS = DEPLOY / "prometheus"
RULES = PROMETHEUS / "colo-rules.yaml"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"

IMAGE_REPO = "ghcr.io/colo-plane/colo-plane"
# The job names the rules match on; the pods' app.kubernetes.io/name labels,
# the Operator's monitors (jobLabel) and the example scrape configs give them.
RULE_JOBS = {"coordinator": "colo-coordinator", "agent": "colo-agent"}
# Labels Prometheus attaches to every scraped series.
TARGET_LABELS = frozenset({"job", "instance"})
# Which container port (by name) each daemon flag opens.
DAEMON_PORTS = {
    "coordinator": {"grpc": "listen", "metrics": "metrics_listen"},
    "agent": {"grpc": "listen", "data": "data_listen", "metrics": "metrics_listen"},
}
# The flags whose address a daemon advertises to others (the agent registers
# the address it binds): a wildcard there is an address nobody can dial.
ADVERTISED = {"agent": ("listen", "data_listen")}
SHUTDOWN_GRACE = {"coordinator": coordinator_server.SHUTDOWN_GRACE, "agent": agent_server.SHUTDOWN_GRACE}
HEALTH_SERVICE = {
    "coordinator": colo_pb2.DESCRIPTOR.services_by_name["Coordinator"].full_name,
    "agent": colo_pb2.DESCRIPTOR.services_by_name["Agent"].full_name,
}


def _load_all(path: Path) -> list[Any]:
    return list(yaml.safe_load_all(path.read_text()))


def _load(path: Path) -> Any:
    docs = _load_all(path)
    assert len(docs) == 1, f"{path}: one YAML document expected"
    return docs[0]


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# -- the CLI ------------------------------------------------------------------------


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


PARSER = cli._parser()  # the `colo` command, built as main() builds it


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {opt: a for a in parser._actions for opt in a.option_strings}


def _command_parser(argv: list[str]) -> tuple[argparse.ArgumentParser | None, list[str]]:
    """The (sub)parser a command line ends up in, and the words after its name."""
    parser, rest = PARSER, argv
    while rest and (sub := _subcommands(parser).get(rest[0])) is not None:
        parser, rest = sub, rest[1:]
    return (None, rest) if parser is PARSER else (parser, rest)


def flag_errors(argv: list[str]) -> list[str]:
    """What is wrong with `colo ARGV`: an unknown command, a flag the command
    does not define (argparse would accept an abbreviation: not here), a
    hidden test flag, or anything argparse itself refuses."""
    parser, rest = _command_parser(argv)
    if parser is None:
        return [f"`colo {shlex.join(argv)}`: no such command"]
    options = _options(parser)
    errors = []
    for word in rest:
        if word == "--":
            break
        if word.startswith("--"):
            name = word.split("=", 1)[0]
            if name not in options:
                errors.append(f"`{parser.prog}` has no flag {name}")
            elif options[name].help == argparse.SUPPRESS:
                errors.append(f"{name} is a hidden test hook, not for deployment")
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.suppress(SystemExit):
        PARSER.parse_args(argv)
        return errors
    return [*errors, stderr.getvalue().strip().splitlines()[-1]]


def parse(argv: list[str]) -> argparse.Namespace:
    assert not (errors := flag_errors(argv)), errors
    return PARSER.parse_args(argv)


def _port(address: str) -> int:
    return addresses.parse(address)[1]


def _host(address: str) -> str:
    return addresses.parse(address)[0]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_wildcard(host: str) -> bool:
    return host in ("0.0.0.0", "::", "")


# -- Kubernetes ---------------------------------------------------------------------


def _kustomization(directory: Path) -> dict[str, Any]:
    k = _load(directory / "kustomization.yaml")
    assert isinstance(k, dict)
    return k


def _kustomize_files(directory: Path) -> Iterator[Path]:
    """The resource files a kustomization pulls in, bases followed."""
    for entry in _kustomization(directory).get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            yield from _kustomize_files(path)
        else:
            yield path


def _namespace(directory: Path) -> str:
    ns: str = _kustomization(directory)["namespace"]
    return ns


def _objects(directory: Path = KUBE) -> list[dict[str, Any]]:
    return [doc for path in _kustomize_files(directory) for doc in _load_all(path)]


def _all_objects() -> list[dict[str, Any]]:
    """Everything under deploy/kubernetes, each object once."""
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(KUBE.rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in _load_all(path):
            seen[(doc["kind"], doc["metadata"]["name"])] = doc
    return list(seen.values())


def _by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


@dataclass
class Container:
    workload: dict[str, Any]
    pod: dict[str, Any]  # the pod template
    spec: dict[str, Any]  # the container
    env: dict[str, str]
    argv: list[str]

    @property
    def daemon(self) -> str:
        return self.argv[0]

    @property
    def ports(self) -> dict[str, int]:
        return {p["name"]: p["containerPort"] for p in self.spec.get("ports", [])}

    @property
    def name(self) -> str:
        return f"{self.workload['kind']}/{self.workload['metadata']['name']}"  # for messages


# What the downward API would give, for the fields the manifests may use.
FIELD_SAMPLES = {
    "spec.nodeName": "xen-host-1",
    "status.hostIP": "192.0.2.10",
    "status.podIP": "10.1.2.3",
    "metadata.name": "colo-pod-0",
}
LABEL_SAMPLE = "zone-a"
_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def _expand(text: str, env: dict[str, str], where: str) -> str:
    """Kubernetes' $(VAR) expansion (env and args).  An undefined $(VAR)
    would be passed on literally: here it is an error."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        assert name in env, f"{where}: $({name}) is not defined in the container's env"
        return env[name]

    return _VAR_REF.sub(sub, text)


def _container_env(spec: dict[str, Any], namespace: str, where: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for var in spec.get("env", []):
        if "value" in var:
            env[var["name"]] = _expand(var["value"], env, where)
            continue
        path = var["valueFrom"]["fieldRef"]["fieldPath"]
        if path == "metadata.namespace":
            env[var["name"]] = namespace
        elif path.startswith("metadata.labels["):
            env[var["name"]] = LABEL_SAMPLE
        else:
            assert path in FIELD_SAMPLES, f"{where}: env {var['name']} from {path}: add a sample"
            env[var["name"]] = FIELD_SAMPLES[path]
    return env


def _containers(directory: Path = KUBE) -> list[Container]:
    """Every container that runs the colo image, its argv expanded."""
    namespace = _namespace(KUBE / "base")
    out = []
    for obj in _objects(directory):
        if obj["kind"] not in ("StatefulSet", "DaemonSet", "Deployment"):
            continue
        pod = obj["spec"]["template"]
        for spec in pod["spec"]["containers"]:
            if not spec["image"].startswith(IMAGE_REPO + ":"):
                continue
            where = f"{obj['kind']}/{obj['metadata']['name']}"
            assert spec.get("command", ["colo"]) == ["colo"], f"{where}: the image's entrypoint is colo"
            env = _container_env(spec, namespace, where)
            argv = [_expand(a, env, where) for a in spec.get("args", [])]
            out.append(Container(obj, pod, spec, env, argv))
    return out


DAEMONS = ["coordinator", "agent"]


def _container(daemon: str, directory: Path = KUBE) -> Container:
    """The one container that runs `colo DAEMON` (read in the test, not at
    collection: a broken manifest fails its tests, not the whole module)."""
    (container,) = [c for c in _containers(directory) if c.daemon == daemon]
    return container


# -- systemd ------------------------------------------------------------------------


def _unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """A unit file: section -> [(key, value)] in order (keys repeat)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    logical = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith(("#", ";"))):
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        line, logical = logical + line, ""
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not key=value: {line!r}"
        current.append((key.strip(), value.strip()))
    return sections


def _setting(unit: dict[str, list[tuple[str, str]]], key: str, section: str = "Service") -> str:
    values = [v for k, v in unit.get(section, []) if k == key]
    assert values, f"no {key}= in [{section}]"
    return values[-1]


def _env_file(path: Path) -> dict[str, str]:
    env = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not KEY=value: {line!r}"
        env[key.strip()] = value.strip().strip('"').strip("'")
    return env


SPECIFIERS = {"%l": "xen-a", "%H": "xen-a.example", "%%": "%"}


def _unit_env(unit: dict[str, list[tuple[str, str]]]) -> dict[str, str]:
    """Environment= then EnvironmentFile= (the file wins, as in systemd),
    the file read from deploy/systemd by its name."""
    env: dict[str, str] = {}
    for key, value in unit["Service"]:
        if key == "Environment":
            for word in shlex.split(value):
                name, _, val = word.partition("=")
                for spec, sample in SPECIFIERS.items():
                    val = val.replace(spec, sample)
                env[name] = val
    for key, value in unit["Service"]:
        if key == "EnvironmentFile":
            local = SYSTEMD / Path(value.lstrip("-")).name
            assert local.exists(), f"EnvironmentFile={value}: no example {_rel(local)}"
            env.update(_env_file(local))
    return env


def _exec_argv(unit: dict[str, list[tuple[str, str]]], where: str) -> list[str]:
    """ExecStart= with systemd's variable rules: ${VAR} substitutes in place,
    a word that is only $VAR is split on whitespace (and vanishes if empty)."""
    env = _unit_env(unit)
    words = []
    for word in shlex.split(_setting(unit, "ExecStart")):
        if m := re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word):
            assert m.group(1) in env, f"{where}: ${m.group(1)} is set nowhere"
            words += env[m.group(1)].split()
            continue

        def sub(m: re.Match[str]) -> str:
            assert m.group(1) in env, f"{where}: ${{{m.group(1)}}} is set nowhere"
            return env[m.group(1)]

        words.append(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", sub, word))
    assert words[0].endswith("/colo"), f"{where}: ExecStart runs {words[0]}, not colo"
    return words[1:]


UNITS = {"coordinator": SYSTEMD / "colo-coordinator.service", "agent": SYSTEMD / "colo-agent.service"}


def _seconds(text: str) -> float:
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*(ms|min|s|m|h)?", text):
        total += float(number) * {"ms": 0.001, "": 1, "s": 1, "min": 60, "m": 60, "h": 3600}[unit]
    return total


# -- the metrics --------------------------------------------------------------------


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
# Series Prometheus makes itself.
SYNTHETIC = {"up": frozenset[str]()}


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


# -- PromQL, just enough to know which series and labels an expression uses ---------

_TOKEN = re.compile(
    r"""
    (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])
  | (?P<duration>\d+(?:ms|[smhdwy])(?![A-Za-z0-9_:]))
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^<>=,(){}])
  | (?P<space>\s+)
    """,
    re.VERBOSE,
)
AGGREGATIONS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
}  # fmt: skip
# Functions whose result keeps the labels of their (first vector) argument.
KEEP_LABELS = {
    "rate", "irate", "increase", "delta", "idelta", "deriv", "predict_linear", "changes", "resets",
    "abs", "ceil", "floor", "round", "clamp", "clamp_min", "clamp_max", "exp", "ln", "log2", "log10",
    "sqrt", "sgn", "sort", "sort_desc", "timestamp", "avg_over_time", "min_over_time",
    "max_over_time", "sum_over_time", "count_over_time", "quantile_over_time", "stddev_over_time",
    "last_over_time", "present_over_time",
}  # fmt: skip
COMPARISONS = {"==", "!=", ">", "<", ">=", "<="}


class PromQLError(ValueError):
    pass


@dataclass
class Value:
    """What an expression yields: its labels, or a scalar."""

    labels: frozenset[str] = frozenset()
    scalar: bool = False
    selector_equalities: frozenset[str] = frozenset()  # for absent()


@dataclass
class PromQL:
    """A recursive-descent reader of PromQL that tracks, instead of values,
    which labels each subexpression carries, and records every problem: a
    series colo does not expose, a label a series does not have (in a
    matcher, by/without, on/ignoring, group_left/right), a label value the
    code never sets."""

    series: dict[str, frozenset[str]]
    problems: list[str] = field(default_factory=list)
    used: set[str] = field(default_factory=set)
    tokens: list[tuple[str, str]] = field(default_factory=list)
    pos: int = 0

    def read(self, expr: str) -> Value:
        self.tokens, self.pos, end = [], 0, 0
        for m in _TOKEN.finditer(expr):
            if m.start() != end:
                raise PromQLError(f"cannot read {expr[end : m.start()]!r}")
            end = m.end()
            if m.lastgroup != "space":
                self.tokens.append((m.lastgroup or "", m.group(0)))
        if end != len(expr):
            raise PromQLError(f"cannot read {expr[end:]!r}")
        value = self._or()
        if self.pos != len(self.tokens):
            raise PromQLError(f"unexpected {self._peek()[1]!r}")
        return value

    # -- tokens
    def _peek(self, ahead: int = 0) -> tuple[str, str]:
        i = self.pos + ahead
        return self.tokens[i] if i < len(self.tokens) else ("end", "")

    def _take(self, text: str | None = None) -> str:
        kind, tok = self._peek()
        if kind == "end" or (text is not None and tok != text):
            raise PromQLError(f"expected {text or 'more'}, found {tok or 'the end'}")
        self.pos += 1
        return tok

    def _at(self, *texts: str) -> bool:
        return self._peek()[1] in texts and self._peek()[0] in ("op", "ident")

    def _label_list(self) -> list[str]:
        self._take("(")
        names = []
        while not self._at(")"):
            kind, tok = self._peek()
            if kind != "ident":
                raise PromQLError(f"expected a label name, found {tok!r}")
            names.append(self._take())
            if self._at(","):
                self._take()
        self._take(")")
        return names

    # -- binary operators, lowest precedence first
    def _binary(self, left: Value, op: str, next_level: Any) -> Value:
        bool_ = False
        if op in COMPARISONS and self._at("bool"):
            self._take()
            bool_ = True
        on = ignoring = group = None
        side = ""
        if self._at("on", "ignoring"):
            which = self._take()
            names = self._label_list()
            on, ignoring = (names, None) if which == "on" else (None, names)
            if self._at("group_left", "group_right"):
                side = self._take()
                group = self._label_list() if self._at("(") else []
        right: Value = next_level()
        if left.scalar or right.scalar:
            return Value(scalar=True) if left.scalar and right.scalar else (right if left.scalar else left)
        for name in on or ():
            if name not in left.labels or name not in right.labels:
                self.problems.append(f"on({name}): not a label of both sides")
        for name in ignoring or ():
            if name not in left.labels | right.labels:
                self.problems.append(f"ignoring({name}): not a label of either side")
        one = right if side == "group_left" else left
        for name in group or ():
            if name not in one.labels:
                self.problems.append(f"{side}({name}): not a label of the other side")
        if op == "or":
            return Value(left.labels & right.labels)
        if op in ("and", "unless") or (op in COMPARISONS and not bool_):
            base = left.labels
        elif on is not None and not side:
            base = frozenset(on)
        else:
            base = left.labels if side != "group_right" else right.labels
        if ignoring and not side:
            base -= frozenset(ignoring)
        return Value(base | frozenset(group or ()))

    def _or(self) -> Value:
        left = self._and()
        while self._at("or"):
            left = self._binary(left, self._take(), self._and)
        return left

    def _and(self) -> Value:
        left = self._comparison()
        while self._at("and", "unless"):
            left = self._binary(left, self._take(), self._comparison)
        return left

    def _comparison(self) -> Value:
        left = self._additive()
        while self._peek()[0] == "op" and self._peek()[1] in COMPARISONS:
            left = self._binary(left, self._take(), self._additive)
        return left

    def _additive(self) -> Value:
        left = self._multiplicative()
        while self._at("+", "-"):
            left = self._binary(left, self._take(), self._multiplicative)
        return left

    def _multiplicative(self) -> Value:
        left = self._power()
        while self._at("*", "/", "%", "atan2"):
            left = self._binary(left, self._take(), self._power)
        return left

    def _power(self) -> Value:
        left = self._unary()
        if self._at("^"):
            return self._binary(left, self._take(), self._power)
        return left

    def _unary(self) -> Value:
        if self._at("+", "-"):
            self._take()
            return self._unary()
        value = self._primary()
        while True:
            kind, tok = self._peek()
            if kind == "range":
                self._take()
            elif self._at("offset"):
                self._take()
                if self._peek()[0] != "duration":
                    raise PromQLError("offset wants a duration")
                self._take()
            elif tok == "@":
                raise PromQLError("@ modifiers are not read here")
            else:
                return value

    # -- operands
    def _primary(self) -> Value:
        kind, tok = self._peek()
        if kind in ("number", "duration"):
            self._take()
            return Value(scalar=True)
        if kind == "string":
            self._take()
            return Value(scalar=True)
        if tok == "(" and kind == "op":
            self._take()
            value = self._or()
            self._take(")")
            return value
        if kind != "ident":
            raise PromQLError(f"unexpected {tok or 'end'}")
        if tok in AGGREGATIONS and (self._peek(1)[1] in ("(", "by", "without")):
            return self._aggregation()
        if self._peek(1)[1] == "(":
            return self._function()
        return self._selector()

    def _args(self) -> list[Value]:
        self._take("(")
        args = []
        while not self._at(")"):
            args.append(self._or())
            if self._at(","):
                self._take()
        self._take(")")
        return args

    def _aggregation(self) -> Value:
        op = self._take()
        grouping: tuple[str, list[str]] | None = None
        if self._at("by", "without"):
            grouping = (self._take(), self._label_list())
        args = self._args()
        if grouping is None and self._at("by", "without"):
            grouping = (self._take(), self._label_list())
        vector = args[-1]
        if vector.scalar:
            raise PromQLError(f"{op}() of a scalar")
        labels: frozenset[str] = frozenset()
        if grouping is not None:
            how, names = grouping
            for name in names:
                if name not in vector.labels:
                    self.problems.append(f"{op} {how} ({name}): not a label of what it aggregates")
            labels = frozenset(names) if how == "by" else vector.labels - frozenset(names)
        if op in ("topk", "bottomk", "limitk", "limit_ratio"):
            labels = vector.labels
        if op == "count_values":
            labels |= {"value"}  # the label named by its first argument
        return Value(labels)

    def _function(self) -> Value:
        name = self._take()
        args = self._args()
        vectors = [a for a in args if not a.scalar]
        if name in KEEP_LABELS:
            if not vectors:
                raise PromQLError(f"{name}() of no vector")
            return Value(vectors[0].labels)
        if name == "histogram_quantile":
            return Value(vectors[0].labels - {"le"})
        if name in ("absent", "absent_over_time"):
            return Value(vectors[0].selector_equalities)
        if name == "vector":
            return Value()
        if name in ("scalar", "time"):
            return Value(scalar=True)
        raise PromQLError(f"{name}(): how it treats labels is not known here: add it")

    def _selector(self) -> Value:
        name = self._take()
        self.used.add(name)
        labels = self.series.get(name)
        if labels is None:
            hint = [n for n in self.series if n.startswith(name) or name.startswith(n)]
            self.problems.append(
                f"{name}: no such series in colo_plane/metrics.py"
                + (f" (did you mean {', '.join(sorted(hint)[:3])}?)" if hint else "")
            )
            labels = frozenset()
        if ":" not in name:  # scraped, not recorded: Prometheus adds the target's labels
            labels |= TARGET_LABELS
        equalities = set()
        if self._at("{"):
            self._take()
            while not self._at("}"):
                if self._peek()[0] != "ident":
                    raise PromQLError(f"{name}{{: expected a label name, found {self._peek()[1]!r}")
                label = self._take()
                op = self._take()
                if op not in ("=", "!=", "=~", "!~"):
                    raise PromQLError(f"{name}{{{label}{op}: not a label matcher")
                kind, raw = self._peek()
                if kind != "string":
                    raise PromQLError(f"{name}{{{label}{op}: wants a string")
                self._take()
                value = raw[1:-1]
                if label not in labels:
                    self.problems.append(f"{name}{{{label}}}: {name} has no label {label}")
                self._check_value(name, label, op, value)
                if op == "=":
                    equalities.add(label)
                if self._at(","):
                    self._take()
            self._take("}")
        return Value(labels, selector_equalities=frozenset(equalities))

    def _check_value(self, name: str, label: str, op: str, value: str) -> None:
        known = LABEL_VALUES.get(label)
        if known is None:
            return
        values = value.split("|") if op in ("=~", "!~") else [value]
        if op in ("=~", "!~") and any(re.escape(v) != v for v in values):
            return  # a real regular expression: not checked
        for v in values:
            if v not in known:
                self.problems.append(f'{name}{{{label}{op}"{value}"}}: {v!r} is not a value the code sets')


def _rules(path: Path = RULES) -> list[dict[str, Any]]:
    doc = _load(path)
    return [rule for group in doc["groups"] for rule in group["rules"]]


def rule_problems(rules: list[dict[str, Any]]) -> list[str]:
    """Every problem in a list of rules, in file order: recording rules are
    series the rules after them may use, with the labels their expression
    leaves."""
    series = {**METRICS, **SYNTHETIC}
    problems = []
    for rule in rules:
        name = rule.get("alert") or rule.get("record")
        reader = PromQL(series)
        try:
            value = reader.read(rule["expr"])
        except PromQLError as exc:
            problems.append(f"{name}: {exc}")
            continue
        problems += [f"{name}: {p}" for p in reader.problems]
        if "record" in rule:
            series[rule["record"]] = value.labels
            continue
        templates = " ".join(
            str(v) for v in {**rule.get("annotations", {}), **rule.get("labels", {})}.values()
        )
        for label in re.findall(r"\$labels\.([A-Za-z_][A-Za-z0-9_]*)", templates):
            if label not in value.labels:
                problems.append(
                    f"{name}: $labels.{label} is not a label of the alert's series "
                    f"({', '.join(sorted(value.labels)) or 'none'})"
                )
    return problems


# =====================================================================================
# The tests
# =====================================================================================


def _yaml_files() -> list[Path]:
    return sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])


def test_deploy_has_what_operators_need() -> None:
    for path in [
        DEPLOY / "Containerfile",
        KUBE / "kustomization.yaml",
        KUBE / "base" / "kustomization.yaml",
        KUBE / "prometheus-operator" / "kustomization.yaml",
        UNITS["coordinator"],
        UNITS["agent"],
        RULES,
        DEPLOY_DOC,
    ]:
        assert path.is_file(), f"{_rel(path)} is missing"


@pytest.mark.parametrize("path", _yaml_files(), ids=_rel)
def test_every_yaml_file_parses(path: Path) -> None:
    docs = _load_all(path)
    assert docs, f"{_rel(path)} is empty"
    for doc in docs:
        assert isinstance(doc, dict), f"{_rel(path)}: a document that is not a mapping"


# -- the image ----------------------------------------------------------------------


def test_images_are_the_package_version() -> None:
    workloads = [o for o in _all_objects() if "template" in o.get("spec", {})]
    images = {c["image"] for o in workloads for c in o["spec"]["template"]["spec"]["containers"]}
    assert images == {f"{IMAGE_REPO}:{__version__}"}
    (entry,) = _kustomization(KUBE / "base")["images"]
    assert entry == {"name": IMAGE_REPO, "newTag": __version__}


def test_containerfile_builds_what_the_manifests_run() -> None:
    text = (DEPLOY / "Containerfile").read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE)
    assert len(froms) == 2, "a build stage and a runtime stage"
    assert "python:3.11-slim-bookworm" in text
    build, runtime = re.split(r"^FROM\s.*$", text, flags=re.MULTILINE)[1:3]
    assert "libxen-dev" in build and "gcc" in build
    assert not re.search(r"\b(gcc|libxen-dev|build-essential)\b", runtime), "no compiler at run time"
    assert re.search(r"^USER\s+10001", runtime, re.MULTILINE), "the image runs as the non-root user"
    assert re.search(r'^ENTRYPOINT\s+\["colo"\]', runtime, re.MULTILINE)
    assert _container("coordinator").pod["spec"]["securityContext"]["runAsUser"] == 10001
    ports = {int(p) for line in re.findall(r"^EXPOSE\s+(.*)$", runtime, re.MULTILINE) for p in line.split()}
    assert ports == {port for c in _containers() for port in c.ports.values()}


# -- Kubernetes ---------------------------------------------------------------------


def test_every_manifest_is_in_a_kustomization() -> None:
    listed = set()
    for kustomization in KUBE.rglob("kustomization.yaml"):
        for path in _kustomize_files(kustomization.parent):
            assert path.exists(), f"{_rel(kustomization)} lists {path}, which does not exist"
            listed.add(path)
    files = {p.resolve() for p in KUBE.rglob("*.yaml") if p.name != "kustomization.yaml"}
    assert files - listed == set(), "manifests no kustomization applies"


def test_the_default_kustomization_runs_both_daemons() -> None:
    daemons = sorted(c.daemon for c in _containers())
    assert daemons == ["agent", "coordinator"]
    kinds = {(o["kind"], o["metadata"]["name"]) for o in _objects()}
    assert ("Namespace", _namespace(KUBE / "base")) in kinds
    assert not any(k.startswith(("Role", "ClusterRole")) for k, _ in kinds), "nothing needs RBAC"


@pytest.mark.parametrize("daemon", DAEMONS)
def test_manifest_flags_exist(daemon: str) -> None:
    container = _container(daemon)
    assert container.daemon in ("coordinator", "agent")
    assert flag_errors(container.argv) == []


@pytest.mark.parametrize("daemon", DAEMONS)
def test_manifest_ports_are_the_ones_the_flags_open(daemon: str) -> None:
    container = _container(daemon)
    args = parse(container.argv)  # defaults included: an omitted flag means its default
    wanted = DAEMON_PORTS[container.daemon]
    assert set(container.ports) == set(wanted), f"{container.name}: ports by name"
    for port_name, dest in wanted.items():
        address = getattr(args, dest)
        assert address, (
            f"{container.name}: --{dest.replace('_', '-')} is off, but port {port_name} is declared"
        )
        assert _port(address) == container.ports[port_name], f"{container.name}: {port_name} vs --{dest}"
        assert not _is_loopback(_host(address)), f"{container.name}: {address} is unreachable from outside"
    for dest in ADVERTISED.get(container.daemon, ()):
        host = _host(getattr(args, dest))
        assert not _is_wildcard(host), f"{container.name}: --{dest} is advertised: {host} cannot be dialled"


@pytest.mark.parametrize("daemon", DAEMONS)
def test_probes_ask_the_health_service_the_daemon_serves(daemon: str) -> None:
    container = _container(daemon)
    for probe in ("readinessProbe", "livenessProbe"):
        grpc_probe = container.spec[probe]["grpc"]
        assert grpc_probe["port"] == container.ports["grpc"], f"{container.name} {probe}"
        assert grpc_probe["service"] == HEALTH_SERVICE[container.daemon], f"{container.name} {probe}"


@pytest.mark.parametrize("daemon", DAEMONS)
def test_pods_are_scraped_on_their_metrics_port(daemon: str) -> None:
    container = _container(daemon)
    annotations = container.pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == container.ports["metrics"]
    assert annotations.get("prometheus.io/path", "/metrics") == "/metrics"
    # The job name the rules expect comes from this label (scrape config, jobLabel).
    assert container.pod["metadata"]["labels"]["app.kubernetes.io/name"] == RULE_JOBS[container.daemon]


@pytest.mark.parametrize("daemon", DAEMONS)
def test_termination_grace_covers_the_graceful_shutdown(daemon: str) -> None:
    container = _container(daemon)
    grace = container.pod["spec"]["terminationGracePeriodSeconds"]
    assert grace > SHUTDOWN_GRACE[container.daemon] + 1, container.name


def test_services_point_at_declared_ports() -> None:
    objects = _objects()
    for svc in _by_kind(objects, "Service"):
        selector = svc["spec"]["selector"]
        pods = [c for c in _containers() if selector.items() <= c.pod["metadata"]["labels"].items()]
        assert pods, f"Service {svc['metadata']['name']} selects no colo pod"
        for port in svc["spec"]["ports"]:
            target = port["targetPort"]
            for c in pods:
                assert (target in c.ports) if isinstance(target, str) else (target in c.ports.values())


def _coordinator_service() -> tuple[dict[str, Any], Container]:
    coordinator = _container("coordinator")
    labels = coordinator.pod["metadata"]["labels"]
    (svc,) = [s for s in _by_kind(_objects(), "Service") if s["spec"]["selector"].items() <= labels.items()]
    assert coordinator.workload["spec"]["serviceName"] == svc["metadata"]["name"]
    return svc, coordinator


def test_agents_reach_the_coordinator_through_its_service() -> None:
    svc, coordinator = _coordinator_service()
    agent = _container("agent")
    address = parse(agent.argv).coordinator
    host = _host(address).split(".")
    assert host[0] == svc["metadata"]["name"], f"--coordinator {address}: not the coordinator's Service"
    if len(host) > 1:
        assert host[1] == _namespace(KUBE / "base"), f"--coordinator {address}: another namespace"
    (port,) = [p for p in svc["spec"]["ports"] if p["port"] == _port(address)]
    assert port["targetPort"] in ("grpc", coordinator.ports["grpc"])


def test_agent_daemonset_fits_a_xen_host() -> None:
    agent = _container("agent")
    pod = agent.pod["spec"]
    args = parse(agent.argv)
    assert agent.workload["kind"] == "DaemonSet"
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet", "hostNetwork pods resolve Service names only so"
    assert pod["nodeSelector"], "only on labelled Xen hosts"
    assert args.host_id == FIELD_SAMPLES["spec.nodeName"], "--host-id is the node's name"
    for dest in ("listen", "data_listen"):
        assert _host(getattr(args, dest)) == FIELD_SAMPLES["status.hostIP"], f"--{dest} on the node's IP"
    assert args.service_host == FIELD_SAMPLES["status.hostIP"]
    assert args.label and all("=" in label for label in args.label)
    assert agent.spec["securityContext"]["privileged"] is True
    mounts = {m["mountPath"]: m["name"] for m in agent.spec["volumeMounts"]}
    host_paths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert host_paths[mounts["/dev/xen"]] == "/dev/xen"


def test_coordinator_keeps_its_store_on_the_claim() -> None:
    _, coordinator = _coordinator_service()
    sts = coordinator.workload
    assert sts["kind"] == "StatefulSet" and sts["spec"]["replicas"] == 1
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    (mount,) = [m for m in coordinator.spec["volumeMounts"] if m["name"] == claim["metadata"]["name"]]
    db = Path(parse(coordinator.argv).db)
    assert db.is_absolute() and db.parent == Path(mount["mountPath"]), "--db on the volume"
    pod_security = coordinator.pod["spec"]["securityContext"]
    assert pod_security["runAsNonRoot"] is True and pod_security["fsGroup"]
    assert coordinator.spec["securityContext"]["allowPrivilegeEscalation"] is False
    assert coordinator.spec["resources"]["requests"]


def test_prometheus_operator_objects_match_the_base() -> None:
    overlay = KUBE / "prometheus-operator"
    objects = _objects(overlay)
    containers = _containers(overlay)
    services = _by_kind(objects, "Service")
    (sm,) = _by_kind(objects, "ServiceMonitor")
    selector = sm["spec"]["selector"]["matchLabels"]
    (svc,) = [s for s in services if selector.items() <= s["metadata"]["labels"].items()]
    assert {e["port"] for e in sm["spec"]["endpoints"]} <= {p["name"] for p in svc["spec"]["ports"]}
    assert svc["metadata"]["labels"][sm["spec"]["jobLabel"]] == RULE_JOBS["coordinator"]
    (pm,) = _by_kind(objects, "PodMonitor")
    selector = pm["spec"]["selector"]["matchLabels"]
    (agent,) = [c for c in containers if selector.items() <= c.pod["metadata"]["labels"].items()]
    assert {e["port"] for e in pm["spec"]["podMetricsEndpoints"]} <= set(agent.ports)
    assert agent.pod["metadata"]["labels"][pm["spec"]["jobLabel"]] == RULE_JOBS["agent"]
    (rule,) = _by_kind(objects, "PrometheusRule")
    assert rule["spec"] == _load(RULES), (
        "prometheusrule.yaml differs from deploy/prometheus/colo-rules.yaml: regenerate it (see its header)"
    )


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
@pytest.mark.parametrize("directory", [KUBE, KUBE / "prometheus-operator"], ids=_rel)
def test_kustomize_builds(directory: Path) -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    built = [d for d in yaml.safe_load_all(out.stdout) if d]
    namespace = _namespace(KUBE / "base")
    for obj in built:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == namespace, obj["metadata"]["name"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "colo-plane"
    assert {o["kind"] for o in built} >= {"Namespace", "Service", "StatefulSet", "DaemonSet"}


# -- systemd ------------------------------------------------------------------------


@pytest.mark.parametrize("daemon", sorted(UNITS))
def test_unit_flags_exist(daemon: str) -> None:
    argv = _exec_argv(_unit(UNITS[daemon]), UNITS[daemon].name)
    assert argv[0] == daemon
    assert flag_errors(argv) == []


@pytest.mark.parametrize("daemon", sorted(UNITS))
def test_unit_stops_gracefully_and_restarts_on_failure(daemon: str) -> None:
    unit = _unit(UNITS[daemon])
    assert _setting(unit, "Restart") == "on-failure"
    assert _setting(unit, "KillSignal") in ("SIGTERM", "TERM")
    assert _seconds(_setting(unit, "TimeoutStopSec")) > SHUTDOWN_GRACE[daemon] + 1
    assert _setting(unit, "WantedBy", "Install") == "multi-user.target"


def test_coordinator_unit_runs_unprivileged_with_its_store_in_the_state_directory() -> None:
    unit = _unit(UNITS["coordinator"])
    assert _setting(unit, "DynamicUser") == "yes" or _setting(unit, "User") not in ("", "root")
    state = _setting(unit, "StateDirectory")
    db = Path(parse(_exec_argv(unit, "colo-coordinator.service")).db)
    assert db.parent == Path("/var/lib") / state, "--db in StateDirectory="
    assert _setting(unit, "ProtectSystem") == "strict"


def test_agent_unit_reaches_the_hypervisor() -> None:
    unit = _unit(UNITS["agent"])
    allowed = [v.split()[0] for k, v in unit["Service"] if k == "DeviceAllow"]
    assert "/dev/xen/privcmd" in allowed
    assert ("PrivateDevices", "yes") not in unit["Service"], "PrivateDevices= hides /dev/xen"
    args = parse(_exec_argv(unit, "colo-agent.service"))
    for dest in ADVERTISED["agent"]:
        assert not _is_wildcard(_host(getattr(args, dest))), f"--{dest} is advertised"


def test_systemd_and_kubernetes_use_the_same_ports() -> None:
    """One set of port numbers for operators to open: the units' (with the
    example settings) equal the manifests'."""
    for daemon, path in UNITS.items():
        args = parse(_exec_argv(_unit(path), path.name))
        for port_name, dest in DAEMON_PORTS[daemon].items():
            assert _port(getattr(args, dest)) == _container(daemon).ports[port_name], (
                f"{path.name}: {port_name}"
            )
    agent = parse(_exec_argv(_unit(UNITS["agent"]), "colo-agent.service"))
    coordinator = parse(_exec_argv(_unit(UNITS["coordinator"]), "colo-coordinator.service"))
    assert _port(agent.coordinator) == _port(coordinator.listen)


def test_example_scrape_config_names_the_jobs_the_rules_use() -> None:
    config = _load(PROMETHEUS / "prometheus.example.yaml")
    assert config["rule_files"] == [RULES.name]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for daemon, job in RULE_JOBS.items():
        args = parse(_exec_argv(_unit(UNITS[daemon]), UNITS[daemon].name))
        targets = [t for sc in jobs[job]["static_configs"] for t in sc["targets"]]
        assert targets and {_port(t) for t in targets} == {_port(args.metrics_listen)}, job
    # The Kubernetes job takes the job label from the pods' app.kubernetes.io/name.
    relabels = [r for job in jobs.values() for r in job.get("relabel_configs", [])]
    assert any(
        r.get("target_label") == "job"
        and r["source_labels"] == ["__meta_kubernetes_pod_label_app_kubernetes_io_name"]
        for r in relabels
    )


# -- the rules ----------------------------------------------------------------------


def test_rules_use_only_what_the_code_exposes() -> None:
    assert rule_problems(_rules()) == []


def test_rules_are_complete_for_the_night_shift() -> None:
    rules = _rules()
    alerts = {r["alert"]: r for r in rules if "alert" in r}
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert rule["annotations"]["summary"].strip(), name
        assert len(rule["annotations"]["description"].split()) >= 15, f"{name}: say what to do"
    # What the rules must watch, by the series they read.
    reader = PromQL({**METRICS, **SYNTHETIC, **{r["record"]: frozenset() for r in rules if "record" in r}})
    for rule in alerts.values():
        reader.read(rule["expr"])
    for series in [
        "colo_pairs",
        "colo_checkpoints_failed_total",
        "colo_verify_failures_total",
        "colo_sync_reports_dropped_total",
        "colo_agents_alive",
        "up",
        "instance_role:colo_checkpoint_pause_seconds:p99_5m",
        "instance:colo_divergence_share:ratio_rate5m",
        "colo_store_errors_total",
    ]:
        assert series in reader.used, f"no alert reads {series}"
    records = [r["record"] for r in rules if "record" in r]
    assert len(records) == len(set(records)) and all(r.count(":") == 2 for r in records), "level:metric:ops"


def test_alerts_name_real_commands() -> None:
    """What the descriptions tell the operator to run, runs."""
    commands = [
        argv
        for rule in _rules()
        for text in rule.get("annotations", {}).values()
        for argv in _inline_commands(" ".join(text.split()))
    ]
    assert len(commands) >= 5
    assert [(argv, errors) for argv in commands if (errors := flag_errors(argv))] == []


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian: prometheus)")
def test_promtool_checks_and_unit_tests_the_rules() -> None:
    for args in (["check", "rules", RULES.name], ["test", "rules", "colo-rules.test.yaml"]):
        out = subprocess.run(
            ["promtool", *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=120, check=False
        )
        assert out.returncode == 0, out.stdout + out.stderr


# -- docs/deploy.md -----------------------------------------------------------------


def _inline_commands(text: str) -> list[list[str]]:
    """`colo ...` in backquotes, as prose names commands."""
    return [shlex.split(m)[1:] for m in re.findall(r"`(colo [^`]+)`", text)]


def _doc_commands() -> list[list[str]]:
    """`colo ...` command lines in the doc's code blocks (a line continued
    with a backslash joined; up to a shell separator or comment), and in
    its prose."""
    text = DEPLOY_DOC.read_text()
    commands = _inline_commands(text)
    for block in re.findall(r"^```[a-z]*\n(.*?)^```", text, re.MULTILINE | re.DOTALL):
        for raw in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\$\(?\{?[A-Za-z_]+\}?\)?", "x", raw.split("#")[0])
            for part in re.split(r";|&&|\|\||\|", line):
                if m := re.search(r"(?:^|[\s/])colo\s+([a-z].*)", part):
                    commands.append(shlex.split(m.group(1)))
    return commands


def test_doc_commands_use_real_flags() -> None:
    commands = _doc_commands()
    assert len(commands) >= 5
    problems = []
    for argv in commands:
        parser, rest = _command_parser(argv)
        if parser is None:
            problems.append(f"colo {shlex.join(argv)}: no such command")
            continue
        options = _options(parser)
        problems += [
            f"colo {shlex.join(argv)}: no flag {w.split('=')[0]}"
            for w in rest
            if w.startswith("--") and w.split("=")[0] not in options
        ]
    assert problems == []


def test_readme_links_the_deploy_doc() -> None:
    assert "(docs/deploy.md)" in (ROOT / "README.md").read_text()


# -- the checks above can fail ------------------------------------------------------


def test_flag_check_catches_unknown_abbreviated_hidden_and_malformed_flags() -> None:
    assert flag_errors(["agent", "--host-id=h", "--no-such-flag=1"])
    assert flag_errors(["agent", "--host-id=h", "--metrics=0.0.0.0:1"]), (
        "argparse would take the abbreviation"
    )
    assert flag_errors(["agent", "--host-id=h", "--test-send-only-a"])
    assert flag_errors(["coordinator", "--heartbeat-timeout=soon"])
    assert flag_errors(["agent"]), "--host-id is required"
    assert flag_errors(["coordinatorr"])
    assert flag_errors(["coordinator", "--listen=0.0.0.0:7000"]) == []


def test_unit_parsing_splits_and_substitutes_as_systemd_does(tmp_path: Path) -> None:
    unit = tmp_path / "x.service"
    unit.write_text(
        "[Service]\nEnvironment=A=1.2.3.4 EXTRA= H=%l\n"
        "ExecStart=/usr/bin/colo agent --listen ${A}:7100 \\\n"
        "    $EXTRA --host-id ${H} --label=a=b\n"
    )
    argv = _exec_argv(_unit(unit), "x")
    assert argv == ["agent", "--listen", "1.2.3.4:7100", "--host-id", "xen-a", "--label=a=b"]


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ("rate(colo_no_such_total[5m])", "no such series"),
        ("colo_pairs_total", "no such series"),  # a gauge has no _total
        ("rate(colo_checkpoint_pause_seconds[5m])", "no such series"),  # a histogram is read by suffix
        ('colo_pairs{status="UNPROTECTED"}', "has no label status"),
        ('colo_pairs{state="unprotected"}', "not a value the code sets"),
        ('colo_failovers_total{cause=~"primary_lost|host_lost"}', "not a value the code sets"),
        ('grpc_server_handled_total{grpc_service="colo.Coordinator"}', "not a value the code sets"),
        ("sum by (state) (colo_agents_alive)", "not a label of what it aggregates"),
        ("sum by (role, le) (rate(colo_pages_sent_total[5m]))", "not a label of what it aggregates"),
        ("colo_agents - on(state) colo_agents_alive", "not a label of both sides"),
        ("no_such_function(colo_agents)", "not known here"),
    ],
)
def test_rule_check_catches(expr: str, problem: str) -> None:
    problems = rule_problems([{"record": "x:y:z", "expr": expr}])
    assert any(problem in p for p in problems), problems


def test_rule_check_catches_template_labels_the_alert_does_not_have() -> None:
    rule = {
        "alert": "X",
        "expr": 'sum(colo_pairs{state="UNPROTECTED"}) > 0',
        "annotations": {"summary": "on {{ $labels.instance }}"},
    }
    assert any("$labels.instance" in p for p in rule_problems([rule]))
    rule["expr"] = 'sum by (instance) (colo_pairs{state="UNPROTECTED"}) > 0'
    assert rule_problems([rule]) == []


def test_rule_check_follows_recording_rules() -> None:
    record = "role:colo_checkpoint_pause_seconds:p99_5m"
    rules: list[dict[str, Any]] = [
        {
            "record": record,
            "expr": "histogram_quantile(0.99, sum by (role, le) "
            "(rate(colo_checkpoint_pause_seconds_bucket[5m])))",
        },
        {
            "alert": "A",
            "expr": f'{record}{{role="primary"}} > 0.1',
            "annotations": {"summary": "{{ $labels.role }}"},
        },
    ]
    assert rule_problems(rules) == []
    rules[1]["expr"] = f'{record}{{instance="a", le="1"}} > 0.1'
    problems = rule_problems(rules)
    assert any("no label le" in p for p in problems) and any("no label instance" in p for p in problems)
    assert any("no such series" in p for p in rule_problems(rules[1:]))


# -- each daemon's series, and the rules' jobs ----------------------------------------


def _families(collectors: tuple[Any, ...]) -> set[str]:
    return {c.describe()[0].name for c in collectors}


def test_each_daemon_exports_its_own_families_only() -> None:
    common, agent, coordinator = (_families(g) for g in (metrics.COMMON, metrics.AGENT, metrics.COORDINATOR))
    defined = {o.describe()[0].name for o in vars(metrics).values() if isinstance(o, MetricWrapperBase)}
    assert common | agent | coordinator == defined, "every metric belongs to one daemon, or both"
    assert not (common & agent or common & coordinator or agent & coordinator)
    for daemon, own, other in (("agent", agent, coordinator), ("coordinator", coordinator, agent)):
        served = {f.name for f in metrics.registry(daemon).collect()}
        assert own | common <= served, daemon
        assert not served & other, f"the {daemon} serves the other daemon's families"


def _job_of(series: str) -> str | None:
    for daemon, group in (("agent", metrics.AGENT), ("coordinator", metrics.COORDINATOR)):
        for collector in group:
            base = collector.describe()[0].name
            if series == base or series.startswith(base + "_"):
                return RULE_JOBS[daemon]
    return None


def scoping_problems(rules: list[dict[str, Any]]) -> list[str]:
    """Selectors of one daemon's series that do not name its job."""
    problems = []
    for rule in rules:
        for name, matchers in re.findall(r"(?<![\w:])(colo_[a-z0-9_]+)(?![\w:])(\{[^}]*\})?", rule["expr"]):
            job = _job_of(name)
            if job is not None and f'job="{job}"' not in matchers:
                problems.append(f'{rule.get("alert") or rule.get("record")}: {name} without job="{job}"')
    return problems


def test_every_rule_names_the_job_of_the_series_it_reads() -> None:
    assert scoping_problems(_rules()) == []
    assert scoping_problems([{"alert": "X", "expr": "absent(colo_agents_alive)"}])
    assert scoping_problems([{"alert": "X", "expr": 'colo_pairs{job="colo-agent"} > 0'}])


@pytest.mark.parametrize("daemon", sorted(UNITS))
def test_units_mean_serving_by_started_and_have_a_watchdog(daemon: str) -> None:
    unit = _unit(UNITS[daemon])
    assert _setting(unit, "Type") == "notify", "colo_plane/sdnotify.py says READY=1 once serving"
    assert _setting(unit, "NotifyAccess") == "main"
    assert _seconds(_setting(unit, "WatchdogSec")) >= 10


def test_agent_unit_is_hardened_as_far_as_privcmd_allows() -> None:
    unit = _unit(UNITS["agent"])
    caps = _setting(unit, "CapabilityBoundingSet").split()
    assert caps and "CAP_SYS_ADMIN" in caps and len(caps) <= 3
    assert "@system-service" in _setting(unit, "SystemCallFilter")


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian: prometheus)")
def test_promtool_checks_the_example_scrape_config(tmp_path: Path) -> None:
    """Debian's promtool lacks Kubernetes service discovery: the file less that job."""
    config = _load(PROMETHEUS / "prometheus.example.yaml")
    config["scrape_configs"] = [j for j in config["scrape_configs"] if "kubernetes_sd_configs" not in j]
    (tmp_path / "prometheus.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / RULES.name).write_text(RULES.read_text())
    out = subprocess.run(
        ["promtool", "check", "config", "prometheus.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
