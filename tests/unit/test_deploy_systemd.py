"""deploy/systemd: `systemd-analyze verify` accepts the units, the flags
their ExecStart passes (with the example colo.env) exist in `colo`, and
they stop gracefully, run unprivileged or hardened as far as each daemon
allows, and use the ports the Kubernetes manifests declare."""

from __future__ import annotations

from pathlib import Path

import pytest
from deploycheck import tools
from deploycheck.cli import flag_errors, host, is_wildcard, parse, port
from deploycheck.daemons import ADVERTISED, DAEMON_PORTS, SHUTDOWN_GRACE
from deploycheck.kube import built, container
from deploycheck.systemd import UNITS, daemon_argv, exec_argv, seconds, setting, unit


def test_systemd_analyze_verifies_the_units(tmp_path: Path) -> None:
    assert tools.systemd_verify(sorted(UNITS.values()), tmp_path) == ""


def test_systemd_analyze_catches_a_broken_unit(tmp_path: Path) -> None:
    broken = tmp_path / "colo-broken.service"
    text = UNITS["agent"].read_text()
    assert "Restart=on-failure" in text
    text = text.replace("Restart=on-failure", "Restart=sometimes").replace(
        "[Service]", "[Service]\nNoSuchKey=1"
    )
    broken.write_text(text)
    said = tools.systemd_verify([broken], tmp_path / "root")
    assert "restart specifier" in said and "Unknown key 'NoSuchKey'" in said, said


@pytest.mark.parametrize("daemon", sorted(UNITS))
def test_unit_flags_exist(daemon: str) -> None:
    argv = daemon_argv(daemon)
    assert argv[0] == daemon
    assert flag_errors(argv) == []


@pytest.mark.parametrize("daemon", sorted(UNITS))
def test_unit_stops_gracefully_and_restarts_on_failure(daemon: str) -> None:
    u = unit(UNITS[daemon])
    assert setting(u, "Restart") == "on-failure"
    assert setting(u, "KillSignal") in ("SIGTERM", "TERM")
    assert seconds(setting(u, "TimeoutStopSec")) > SHUTDOWN_GRACE[daemon] + 1
    assert setting(u, "WantedBy", "Install") == "multi-user.target"


def test_coordinator_unit_runs_unprivileged_with_its_store_in_the_state_directory() -> None:
    u = unit(UNITS["coordinator"])
    assert setting(u, "DynamicUser") == "yes" or setting(u, "User") not in ("", "root")
    state = setting(u, "StateDirectory")
    db = Path(parse(exec_argv(u, "colo-coordinator.service")).db)
    assert db.parent == Path("/var/lib") / state, "--db in StateDirectory="
    assert setting(u, "ProtectSystem") == "strict"


def test_agent_unit_reaches_the_hypervisor() -> None:
    u = unit(UNITS["agent"])
    allowed = [v.split()[0] for k, v in u["Service"] if k == "DeviceAllow"]
    assert "/dev/xen/privcmd" in allowed
    assert ("PrivateDevices", "yes") not in u["Service"], "PrivateDevices= hides /dev/xen"
    args = parse(exec_argv(u, "colo-agent.service"))
    for dest in ADVERTISED["agent"]:
        assert not is_wildcard(host(getattr(args, dest))), f"--{dest} is advertised"


def test_systemd_and_kubernetes_use_the_same_ports() -> None:
    """One set of port numbers for operators to open: the units' (with the
    example settings) equal the manifests'."""
    for daemon, path in UNITS.items():
        args = parse(daemon_argv(daemon))
        for port_name, dest in DAEMON_PORTS[daemon].items():
            assert port(getattr(args, dest)) == container(built(), daemon).ports[port_name], (
                f"{path.name}: {port_name}"
            )
    agent = parse(daemon_argv("agent"))
    coordinator = parse(daemon_argv("coordinator"))
    assert port(agent.coordinator) == port(coordinator.listen)


@pytest.mark.parametrize("daemon", sorted(UNITS))
def test_units_mean_serving_by_started_and_have_a_watchdog(daemon: str) -> None:
    u = unit(UNITS[daemon])
    assert setting(u, "Type") == "notify", "colo_plane/sdnotify.py says READY=1 once serving"
    assert setting(u, "NotifyAccess") == "main"
    assert seconds(setting(u, "WatchdogSec")) >= 10


def test_agent_unit_is_hardened_as_far_as_privcmd_allows() -> None:
    u = unit(UNITS["agent"])
    caps = setting(u, "CapabilityBoundingSet").split()
    assert caps and "CAP_SYS_ADMIN" in caps and len(caps) <= 3
    assert "@system-service" in setting(u, "SystemCallFilter")


def test_unit_parsing_splits_and_substitutes_as_systemd_does(tmp_path: Path) -> None:
    path = tmp_path / "x.service"
    path.write_text(
        "[Service]\nEnvironment=A=1.2.3.4 EXTRA= H=%l\n"
        "ExecStart=/usr/bin/colo agent --listen ${A}:7100 \\\n"
        "    $EXTRA --host-id ${H} --label=a=b\n"
    )
    argv = exec_argv(unit(path), "x")
    assert argv == ["agent", "--listen", "1.2.3.4:7100", "--host-id", "xen-a", "--label=a=b"]
