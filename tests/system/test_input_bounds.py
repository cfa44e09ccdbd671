"""Input the control plane refuses, with real processes: a `colo coordinator`
and two `colo agent`s for the API's bounds (docs/coordinator.md, "Input
bounds"), and an agent's data port for a record it cannot read."""

from __future__ import annotations

import asyncio
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from cluster import AgentProcess, StartAgent
from cluster import sim_spec as agent_sim_spec
from coordinated import CoordinatorProcess, sim_spec, start_cluster, wait_for

from colo_plane import promtext
from colo_plane._proto import colo_pb2
from colo_plane.agent import handshake
from colo_plane.native import DomainType, RecordType
from colo_plane.tools.localcluster import COLO

pytestmark = pytest.mark.system

U64_MAX = 2**64 - 1
INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[CoordinatorProcess, list[AgentProcess]]]:
    """One coordinator and two agents for every refusal here: refusals change nothing."""
    coord, agents = start_cluster(tmp_path_factory.mktemp("bounds"), 2)
    yield coord, agents
    for agent in agents:
        agent.stop()
    coord.stop()


def _refused(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details() or ""  # type: ignore[attr-defined]


def _protect(coord: CoordinatorProcess, spec: colo_pb2.DomainSpec) -> tuple[grpc.StatusCode, str]:
    return _refused(
        lambda: coord.stub.ProtectDomain(
            colo_pb2.ProtectDomainRequest(spec=spec, primary_host="host-a"), timeout=10
        )
    )


def _assert_not_stored(coord: CoordinatorProcess, domain: str) -> None:
    code, _ = _refused(lambda: coord.pair(domain))
    assert code == grpc.StatusCode.NOT_FOUND
    listed = subprocess.run(
        [*COLO, "pairs", "--all", "--coordinator", coord.address],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert listed.returncode == 0 and domain not in listed.stdout, listed.stdout


def _service_pages_at_pages() -> colo_pb2.DomainSpec:
    spec = sim_spec("svc")
    spec.sim.service_pages = spec.sim.pages
    return spec


def _timeout_1ns() -> colo_pb2.DomainSpec:
    spec = sim_spec("tmo")
    spec.checkpoint_timeout.FromNanoseconds(1)
    return spec


def _interval_1e9s() -> colo_pb2.DomainSpec:
    spec = sim_spec("ivl")
    spec.checkpoint_interval.FromSeconds(10**9)
    return spec


def _pages_2_24() -> colo_pb2.DomainSpec:
    return sim_spec("big", pages=1 << 24)


@pytest.mark.parametrize(
    ("make", "field", "bound"),
    [
        (_service_pages_at_pages, "spec.sim.service_pages", "2..pages - 1"),
        (_timeout_1ns, "spec.checkpoint_timeout", "100 ms..10 min"),
        (_interval_1e9s, "spec.checkpoint_interval", "10 ms..1 h"),
        (_pages_2_24, "spec.sim.pages", "1..1048576"),
    ],
    ids=["service_pages>=pages", "checkpoint_timeout=1ns", "checkpoint_interval=1e9s", "sim.pages=2^24"],
)
def test_protect_out_of_bounds_is_refused_and_nothing_stored(
    cluster: tuple[CoordinatorProcess, list[AgentProcess]],
    make: Callable[[], colo_pb2.DomainSpec],
    field: str,
    bound: str,
) -> None:
    coord, _ = cluster
    spec = make()
    code, details = _protect(coord, spec)
    assert code == INVALID and field in details and bound in details, details
    _assert_not_stored(coord, spec.domain)


def test_agent_refuses_the_same_spec_with_the_same_words(
    cluster: tuple[CoordinatorProcess, list[AgentProcess]],
) -> None:
    """PrepareSecondary checks the spec with the coordinator's module: the same field, the same bound."""
    _, agents = cluster
    spec = _service_pages_at_pages()
    code, details = _refused(
        lambda: agents[1].stub.PrepareSecondary(
            colo_pb2.PrepareSecondaryRequest(
                domain=spec.domain, generation=1, epoch=1, spec=spec, pair_secret=b"s" * 32
            ),
            timeout=10,
        )
    )
    assert code == INVALID and "spec.sim.service_pages" in details and "2..pages - 1" in details, details
    assert not agents[1].stub.GetStatus(colo_pb2.GetStatusRequest(), timeout=5).domains


def _report(host: str, generation: int, epoch: int) -> colo_pb2.ReportSyncPointRequest:
    return colo_pb2.ReportSyncPointRequest(
        domain="vm1",
        generation=generation,
        epoch=epoch,
        control_id=colo_pb2.CONTROL_ID_SECONDARY_RESUMED,
        host_id=host,
        role=colo_pb2.ROLE_SECONDARY,
        monotonic_ns=epoch,
    )


def test_reports_from_an_unknown_host_or_a_future_generation_are_refused_and_counted(
    cluster: tuple[CoordinatorProcess, list[AgentProcess]],
) -> None:
    coord, _ = cluster
    coord.stub.ProtectDomain(
        colo_pb2.ProtectDomainRequest(spec=sim_spec("vm1", interval=30.0), primary_host="host-a"), timeout=10
    )
    wait_for("vm1 PROTECTED", lambda: coord.pair("vm1").state == colo_pb2.PAIR_STATE_PROTECTED, timeout=15)
    generation = coord.pair("vm1").generation
    bogus = [_report("host-nope", U64_MAX, 10**6 + i) for i in range(1000)]
    resp = coord.stub.ReportSyncPoints(
        iter(colo_pb2.ReportSyncPointsRequest(points=bogus[i : i + 250]) for i in range(0, 1000, 250)),
        timeout=30,
    )
    assert (resp.accepted, resp.refused) == (0, 1000)
    # One at a time too: a real host at a generation never issued, a stranger at the current one.
    code, details = _refused(lambda: coord.stub.ReportSyncPoint(_report("host-b", U64_MAX, 7), timeout=5))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "never issued" in details, details
    code, details = _refused(
        lambda: coord.stub.ReportSyncPoint(_report("host-nope", generation, 8), timeout=5)
    )
    assert code == grpc.StatusCode.NOT_FOUND and "not a registered host" in details, details
    assert coord.metric("colo_sync_reports_refused_total", reason="host_not_found") == 1001
    assert coord.metric("colo_sync_reports_refused_total", reason="future_generation") == 1
    events = coord.events("vm1")
    assert not [e for e in events if e.kind == colo_pb2.EVENT_KIND_SYNC_POINT and e.host_id == "host-nope"]
    assert not [e for e in events if e.kind == colo_pb2.EVENT_KIND_SYNC_POINT and e.generation == U64_MAX]
    assert coord.pair("vm1").generation == generation  # nothing moved


# -- the data port -------------------------------------------------------------------------

PAGES = 64
IMAGE_HEADER = struct.pack(">QIIH", 0xFFFF_FFFF_FFFF_FFFF, 0x434F4C4F, 2, 0) + bytes(6)  # version 2
DOMAIN_HEADER = struct.pack("<IHHQ", DomainType.SIM, 12, 0, PAGES)
TOO_LONG = struct.pack("<II", RecordType.VERIFY, 0xFFFF_FFF8)  # a record head past the 128 MiB bound


async def _authenticated(address: str, domain: str, generation: int, secret: bytes) -> socket.socket:
    host, port = address.rsplit(":", 1)
    sock = socket.socket()
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    await handshake.client(sock, domain, generation, secret, timeout=5)
    return sock


def _closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the peer closed (EOF or reset), or None if it did not within seconds."""
    t0 = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            sock.settimeout(max(0.001, seconds - (time.monotonic() - t0)))
    except ConnectionResetError:
        pass
    except TimeoutError:
        return None
    return time.monotonic() - t0


def test_a_bad_record_closes_the_data_connection_at_once(agents: StartAgent) -> None:
    b = agents("host-b")
    secret = b"k" * 32
    b.stub.PrepareSecondary(
        colo_pb2.PrepareSecondaryRequest(
            domain="vm1",
            generation=1,
            epoch=1,
            spec=agent_sim_spec("vm1", pages=PAGES, rate=0),
            pair_secret=secret,
            peer_host_id="host-a",
        ),
        timeout=10,
    )
    sock = asyncio.run(_authenticated(b.data, "vm1", 1, secret))
    try:
        sock.setblocking(True)
        sock.settimeout(5)
        assert sock.recv(40, socket.MSG_WAITALL)[:8] == IMAGE_HEADER[:8]  # the secondary's own header
        sock.sendall(IMAGE_HEADER + DOMAIN_HEADER + TOO_LONG)
        took = _closed_within(sock, 0.5)
    finally:
        sock.close()
    assert took is not None, "the secondary kept the connection open after a record it refused"
    metrics = [promtext.scrape(b.info["metrics"], timeout=5)]
    assert promtext.total(metrics, "colo_stream_errors_total", code="RECORD_TOO_LONG") == 1
    assert "record too long" in b.status("vm1").last_error


@pytest.mark.parametrize(
    ("flag", "value"), [("--checkpoint-timeout", "1e-9"), ("--checkpoint-interval", "1e9")], ids=str
)
def test_coordinator_flags_obey_the_spec_bounds(tmp_path: Path, flag: str, value: str) -> None:
    """The daemon's defaults for every pair are bounded like a spec's own fields."""
    out = subprocess.run(
        [*COLO, "coordinator", "--db", str(tmp_path / "c.db"), flag, value],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode != 0
    assert f"{flag} must be" in out.stderr, out.stderr
    assert not (tmp_path / "c.db").exists()  # refused before anything was opened
