"""The containers that run `colo` in what `kubectl kustomize` builds, with
their env and args expanded as the kubelet does ($(VAR), $$), and the
downward API's fields given sample values."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from deploycheck import KUBE, tools

IMAGE_REPO = "ghcr.io/colo-plane/colo-plane"
WORKLOADS = ("StatefulSet", "DaemonSet", "Deployment")
# What the downward API would give, for the fields the manifests may use.
FIELD_SAMPLES = {
    "spec.nodeName": "xen-host-1",
    "status.hostIP": "192.0.2.10",
    "status.podIP": "10.1.2.3",
    "metadata.name": "colo-pod-0",
}
LABEL_SAMPLE = "zone-a"
_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


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


@cache
def built(directory: Path = KUBE) -> list[dict[str, Any]]:
    """What `kubectl kustomize DIRECTORY` builds (once per directory and run)."""
    return tools.kustomize(directory)


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def namespace(objects: list[dict[str, Any]]) -> str:
    (ns,) = by_kind(objects, "Namespace")
    name: str = ns["metadata"]["name"]
    return name


def expand(text: str, env: dict[str, str], where: str) -> str:
    """The kubelet's $(VAR) expansion (env and args).  An undefined $(VAR)
    would be passed on literally: here it is an error."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        assert name in env, f"{where}: $({name}) is not defined in the container's env"
        return env[name]

    return _VAR_REF.sub(sub, text)


def _env(spec: dict[str, Any], pod_namespace: str, where: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for var in spec.get("env", []):
        if "value" in var:
            env[var["name"]] = expand(var["value"], env, where)
            continue
        path = var["valueFrom"]["fieldRef"]["fieldPath"]
        if path == "metadata.namespace":
            env[var["name"]] = pod_namespace
        elif path.startswith("metadata.labels["):
            env[var["name"]] = LABEL_SAMPLE
        else:
            assert path in FIELD_SAMPLES, f"{where}: env {var['name']} from {path}: add a sample"
            env[var["name"]] = FIELD_SAMPLES[path]
    return env


def containers(objects: list[dict[str, Any]]) -> list[Container]:
    """Every container that runs the colo image, its argv expanded."""
    out = []
    for obj in objects:
        if obj["kind"] not in WORKLOADS:
            continue
        pod = obj["spec"]["template"]
        for spec in pod["spec"]["containers"]:
            if not spec["image"].startswith(IMAGE_REPO + ":"):
                continue
            where = f"{obj['kind']}/{obj['metadata']['name']}"
            assert spec.get("command", ["colo"]) == ["colo"], f"{where}: the image's entrypoint is colo"
            env = _env(spec, obj["metadata"]["namespace"], where)
            argv = [expand(a, env, where) for a in spec.get("args", [])]
            out.append(Container(obj, pod, spec, env, argv))
    return out


def container(objects: list[dict[str, Any]], daemon: str) -> Container:
    """The one container that runs `colo DAEMON`."""
    (found,) = [c for c in containers(objects) if c.daemon == daemon]
    return found
