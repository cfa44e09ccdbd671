"""deploy/kubernetes as `kubectl kustomize` builds it: every manifest in a
kustomization, the flags and ports the containers use exist in `colo`,
probes, scraping, grace periods and the Operator's objects agree with the
base and the code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from deploycheck import KUBE, RULES, kube, load, rel, tools
from deploycheck.cli import flag_errors, host, is_loopback, is_wildcard, parse, port
from deploycheck.daemons import ADVERTISED, DAEMON_PORTS, DAEMONS, HEALTH_SERVICE, SHUTDOWN_GRACE
from deploycheck.kube import FIELD_SAMPLES, IMAGE_REPO, built, by_kind, container, containers
from deploycheck.series import RULE_JOBS

from colo_plane import __version__

OPERATOR = KUBE / "prometheus-operator"


def unapplied(tree: Path, objects: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    """The objects in TREE's manifests (not kustomization.yaml) that are not among OBJECTS."""
    applied = {(o["kind"], o["metadata"]["name"]) for o in objects}
    return {
        (doc["kind"], doc["metadata"]["name"]): str(path.relative_to(tree))
        for path in sorted(tree.rglob("*.yaml"))
        if path.name != "kustomization.yaml"
        for doc in yaml.safe_load_all(path.read_text())
        if doc and (doc["kind"], doc["metadata"]["name"]) not in applied
    }


@pytest.mark.parametrize("directory", [KUBE, OPERATOR], ids=rel)
def test_kustomize_builds(directory: Path) -> None:
    objects = built(directory)
    namespace = kube.namespace(built())
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == namespace, obj["metadata"]["name"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "colo-plane"
    assert {o["kind"] for o in objects} >= {"Namespace", "Service", "StatefulSet", "DaemonSet"}


def test_every_manifest_is_in_a_kustomization() -> None:
    assert unapplied(KUBE, built(KUBE) + built(OPERATOR)) == {}, "manifests no kustomization applies"


def test_images_are_the_package_version() -> None:
    workloads = [o for d in (KUBE, OPERATOR) for o in built(d) if o["kind"] in kube.WORKLOADS]
    images = {c["image"] for o in workloads for c in o["spec"]["template"]["spec"]["containers"]}
    assert images == {f"{IMAGE_REPO}:{__version__}"}
    (entry,) = load(KUBE / "base" / "kustomization.yaml")["images"]
    assert entry == {"name": IMAGE_REPO, "newTag": __version__}


def test_the_default_kustomization_runs_both_daemons() -> None:
    daemons = sorted(c.daemon for c in containers(built()))
    assert daemons == ["agent", "coordinator"]
    kinds = {(o["kind"], o["metadata"]["name"]) for o in built()}
    assert ("Namespace", kube.namespace(built())) in kinds
    assert not any(k.startswith(("Role", "ClusterRole")) for k, _ in kinds), "nothing needs RBAC"


@pytest.mark.parametrize("daemon", DAEMONS)
def test_manifest_flags_exist(daemon: str) -> None:
    c = container(built(), daemon)
    assert c.daemon in ("coordinator", "agent")
    assert flag_errors(c.argv) == []


@pytest.mark.parametrize("daemon", DAEMONS)
def test_manifest_ports_are_the_ones_the_flags_open(daemon: str) -> None:
    c = container(built(), daemon)
    args = parse(c.argv)  # defaults included: an omitted flag means its default
    wanted = DAEMON_PORTS[c.daemon]
    assert set(c.ports) == set(wanted), f"{c.name}: ports by name"
    for port_name, dest in wanted.items():
        address = getattr(args, dest)
        assert address, f"{c.name}: --{dest.replace('_', '-')} is off, but port {port_name} is declared"
        assert port(address) == c.ports[port_name], f"{c.name}: {port_name} vs --{dest}"
        assert not is_loopback(host(address)), f"{c.name}: {address} is unreachable from outside"
    for dest in ADVERTISED.get(c.daemon, ()):
        name = host(getattr(args, dest))
        assert not is_wildcard(name), f"{c.name}: --{dest} is advertised: {name} cannot be dialled"


@pytest.mark.parametrize("daemon", DAEMONS)
def test_probes_ask_the_health_service_the_daemon_serves(daemon: str) -> None:
    c = container(built(), daemon)
    for probe in ("readinessProbe", "livenessProbe"):
        grpc_probe = c.spec[probe]["grpc"]
        assert grpc_probe["port"] == c.ports["grpc"], f"{c.name} {probe}"
        assert grpc_probe["service"] == HEALTH_SERVICE[c.daemon], f"{c.name} {probe}"


@pytest.mark.parametrize("daemon", DAEMONS)
def test_pods_are_scraped_on_their_metrics_port(daemon: str) -> None:
    c = container(built(), daemon)
    annotations = c.pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == c.ports["metrics"]
    assert annotations.get("prometheus.io/path", "/metrics") == "/metrics"
    # The job name the rules expect comes from this label (scrape config, jobLabel).
    assert c.pod["metadata"]["labels"]["app.kubernetes.io/name"] == RULE_JOBS[c.daemon]


@pytest.mark.parametrize("daemon", DAEMONS)
def test_termination_grace_covers_the_graceful_shutdown(daemon: str) -> None:
    c = container(built(), daemon)
    grace = c.pod["spec"]["terminationGracePeriodSeconds"]
    assert grace > SHUTDOWN_GRACE[c.daemon] + 1, c.name


def test_services_point_at_declared_ports() -> None:
    for svc in by_kind(built(), "Service"):
        selector = svc["spec"]["selector"]
        pods = [c for c in containers(built()) if selector.items() <= c.pod["metadata"]["labels"].items()]
        assert pods, f"Service {svc['metadata']['name']} selects no colo pod"
        for svc_port in svc["spec"]["ports"]:
            target = svc_port["targetPort"]
            for c in pods:
                assert (target in c.ports) if isinstance(target, str) else (target in c.ports.values())


def _coordinator_service() -> tuple[dict[str, Any], kube.Container]:
    coordinator = container(built(), "coordinator")
    labels = coordinator.pod["metadata"]["labels"]
    (svc,) = [s for s in by_kind(built(), "Service") if s["spec"]["selector"].items() <= labels.items()]
    assert coordinator.workload["spec"]["serviceName"] == svc["metadata"]["name"]
    return svc, coordinator


def test_agents_reach_the_coordinator_through_its_service() -> None:
    svc, coordinator = _coordinator_service()
    agent = container(built(), "agent")
    address = parse(agent.argv).coordinator
    name = host(address).split(".")
    assert name[0] == svc["metadata"]["name"], f"--coordinator {address}: not the coordinator's Service"
    if len(name) > 1:
        assert name[1] == kube.namespace(built()), f"--coordinator {address}: another namespace"
    (svc_port,) = [p for p in svc["spec"]["ports"] if p["port"] == port(address)]
    assert svc_port["targetPort"] in ("grpc", coordinator.ports["grpc"])


def test_agent_daemonset_fits_a_xen_host() -> None:
    agent = container(built(), "agent")
    pod = agent.pod["spec"]
    args = parse(agent.argv)
    assert agent.workload["kind"] == "DaemonSet"
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet", "hostNetwork pods resolve Service names only so"
    assert pod["nodeSelector"], "only on labelled Xen hosts"
    assert args.host_id == FIELD_SAMPLES["spec.nodeName"], "--host-id is the node's name"
    for dest in ("listen", "data_listen"):
        assert host(getattr(args, dest)) == FIELD_SAMPLES["status.hostIP"], f"--{dest} on the node's IP"
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
    objects = built(OPERATOR)
    services = by_kind(objects, "Service")
    (sm,) = by_kind(objects, "ServiceMonitor")
    selector = sm["spec"]["selector"]["matchLabels"]
    (svc,) = [s for s in services if selector.items() <= s["metadata"]["labels"].items()]
    assert {e["port"] for e in sm["spec"]["endpoints"]} <= {p["name"] for p in svc["spec"]["ports"]}
    assert svc["metadata"]["labels"][sm["spec"]["jobLabel"]] == RULE_JOBS["coordinator"]
    (pm,) = by_kind(objects, "PodMonitor")
    selector = pm["spec"]["selector"]["matchLabels"]
    (agent,) = [c for c in containers(objects) if selector.items() <= c.pod["metadata"]["labels"].items()]
    assert {e["port"] for e in pm["spec"]["podMetricsEndpoints"]} <= set(agent.ports)
    assert agent.pod["metadata"]["labels"][pm["spec"]["jobLabel"]] == RULE_JOBS["agent"]
    (rule,) = by_kind(objects, "PrometheusRule")
    assert rule["spec"] == load(RULES), (
        "prometheusrule.yaml differs from deploy/prometheus/colo-rules.yaml: regenerate it (see its header)"
    )


def test_a_manifest_outside_every_kustomization_is_found(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    (base / "kustomization.yaml").write_text("resources: [cm.yaml]\n")
    (base / "cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n")
    (base / "stray.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\n")
    assert unapplied(tmp_path, tools.kustomize(base)) == {("ConfigMap", "b"): "base/stray.yaml"}
    (base / "kustomization.yaml").write_text("resources: [cm.yaml, missing.yaml]\n")
    out = tools.run(["kubectl", "kustomize", str(base)])
    assert out.returncode != 0 and "missing.yaml" in out.stderr, "a listed file that is gone"
