"""The error reasons a client receives only when something is broken: a
secondary that stops answering, a torn checkpoint, a port taken, a host
short of memory, a full disk under the coordinator's store, a watcher that
does not read, a coordinator going away.  Each is broken for real (signals,
the agents' hidden --test-* flags, a namespace, a small tmpfs) and each
answer's google.rpc.ErrorInfo reason is asserted (docs/design.md §7;
test_error_reasons.py has the refusals of a healthy cluster)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cluster import StartAgent, checkpoint, protect
from cluster import sim_spec as agent_spec
from coordinated import sim_spec, start_coordinator, wait_for
from world import Cluster, refusal

from colo_plane import native
from colo_plane._proto import colo_pb2, colo_pb2_grpc
from colo_plane.coordinator.events import WATCHER_QUEUE
from colo_plane.rpc import duration, error_info

pytestmark = pytest.mark.system

CUT = ("--test-cut-checkpoint-after", "300000")  # tears every checkpoint inside its PAGE_DATA


def _checkpoint_request(epoch: int, **fields: object) -> colo_pb2.AgentCheckpointRequest:
    return colo_pb2.AgentCheckpointRequest(domain="vm1", generation=1, epoch=epoch, **fields)  # type: ignore[arg-type]


@contextlib.contextmanager
def _frozen(pid: int) -> Iterator[None]:
    """The process stopped (SIGSTOP): a host that hangs, its sockets open."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


# -- the agent -------------------------------------------------------------------------


def test_a_secondary_that_hangs_busy_then_timed_out_then_no_secondary(agents: StartAgent) -> None:
    """While a checkpoint waits on a frozen secondary, another is BUSY; the
    first ends EPOCH_TIMED_OUT and closes the link; the next is NO_SECONDARY."""
    a, b = agents("host-a"), agents("host-b")
    protect(a, b, agent_spec("vm1", pages=4096, rate=50_000))
    with _frozen(b.proc.pid):
        first = a.stub.Checkpoint.future(_checkpoint_request(2, timeout=duration(3.0)), timeout=30)
        wait_for("checkpointing", lambda: a.status("vm1").state == colo_pb2.PAIR_STATE_CHECKPOINTING)
        assert refusal(lambda: a.stub.Checkpoint(_checkpoint_request(3), timeout=10))[:2] == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "BUSY",
        )
        assert refusal(first.result)[:2] == (grpc.StatusCode.DEADLINE_EXCEEDED, "EPOCH_TIMED_OUT")
    assert refusal(lambda: checkpoint(a, "vm1", 1, 4))[:2] == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "NO_SECONDARY",
    )


def test_a_torn_checkpoint_is_epoch_failed_with_the_c_error(agents: StartAgent) -> None:
    a, b = agents("host-a", *CUT), agents("host-b")
    protect(a, b, agent_spec("vm1", pages=4096, rate=50_000))
    time.sleep(0.1)  # D holds well over the 73 pages the cut needs
    code, reason, metadata = refusal(lambda: checkpoint(a, "vm1", 1, 2))
    assert (code, reason) == (grpc.StatusCode.ABORTED, "EPOCH_FAILED")
    assert metadata.get("native_error"), metadata  # the C error code's name


def test_an_armed_epoch_unprotected_before_it_starts_never_started(agents: StartAgent) -> None:
    a, b = agents("host-a"), agents("host-b")
    protect(a, b, agent_spec("vm1", pages=1024, rate=1000))
    armed = a.stub.Checkpoint.future(_checkpoint_request(2, arm=duration(20.0)), timeout=30)
    time.sleep(0.5)  # armed: no client traffic, so it waits for arm to pass
    assert not armed.done()
    a.stub.SetUnprotected(colo_pb2.SetUnprotectedRequest(domain="vm1", generation=2), timeout=10)
    assert refusal(armed.result)[:2] == (grpc.StatusCode.ABORTED, "NEVER_STARTED")


def test_a_service_port_in_use_cannot_serve(agents: StartAgent) -> None:
    a, b = agents("host-a"), agents("host-b")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        spec = agent_spec("vm1", pages=256)
        spec.service.port = taken.getsockname()[1]
        code, reason, _ = refusal(lambda: protect(a, b, spec))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "CANNOT_SERVE")


def test_a_host_short_of_memory_no_memory(agents: StartAgent, tmp_path: Path) -> None:
    """The agent sees a host with 100 kB available (its own /proc/meminfo, bind
    mounted in a mount namespace, as LXCFS gives a container)."""
    if os.geteuid() != 0:
        pytest.skip("needs root for a mount namespace over /proc/meminfo")
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 1000 kB\nMemAvailable: 100 kB\n")
    wrap = ["unshare", "--mount", "--propagation", "private", "sh", "-c"]
    wrap += ['mount --bind "$1" /proc/meminfo && shift && exec "$@"', "sh", str(meminfo)]
    small = agents("host-a", wrap=wrap)
    req = colo_pb2.PrepareSecondaryRequest(
        domain="vm1", generation=1, epoch=1, spec=agent_spec("vm1", pages=256), pair_secret=b"s" * 32
    )
    code, reason, _ = refusal(lambda: small.stub.PrepareSecondary(req, timeout=10))
    assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "NO_MEMORY")
    assert not small.stub.GetStatus(colo_pb2.GetStatusRequest(), timeout=5).domains


def test_a_xen_domain_here_cannot_open_or_backend_not_built(agents: StartAgent) -> None:
    """No hypervisor on this machine: an agent built with the Xen backend
    cannot open the domain (CANNOT_OPEN, with the C error); one built without
    it says so (BACKEND_NOT_BUILT).  The build decides which this run sees."""
    a = agents("host-a")
    spec = colo_pb2.DomainSpec(domain="vm1", xen=colo_pb2.XenDomainSpec(name="7"))
    req = colo_pb2.PrepareSecondaryRequest(
        domain="vm1", generation=1, epoch=1, spec=spec, pair_secret=b"s" * 32
    )
    code, reason, metadata = refusal(lambda: a.stub.PrepareSecondary(req, timeout=10))
    if native.xen_built():
        assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "CANNOT_OPEN")
        assert metadata.get("native_error"), metadata
    else:
        assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "BACKEND_NOT_BUILT")


def test_a_spec_naming_a_missing_nic_no_nic(agents: StartAgent) -> None:
    """spec.network names a guest NIC this host does not have: refused when
    the pair is set up, naming it, and nothing is left held."""
    a = agents("host-a")
    spec = agent_spec("vm1", pages=256)
    spec.network.interface = "vif99.0"
    spec.network.uplink = "lo"
    req = colo_pb2.PrepareSecondaryRequest(
        domain="vm1", generation=1, epoch=1, spec=spec, pair_secret=b"s" * 32
    )
    code, reason, _ = refusal(lambda: a.stub.PrepareSecondary(req, timeout=10))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "NO_NIC")
    assert not a.stub.GetStatus(colo_pb2.GetStatusRequest(), timeout=5).domains


# -- the coordinator -------------------------------------------------------------------


def test_a_failing_checkpoint_is_checkpoint_failed(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, ("host-a", "host-b"), CUT)
    try:
        cluster.protect(sim_spec("web", pages=4096, rate=50_000, interval=600.0))
        time.sleep(0.1)
        req = colo_pb2.CoordinatorCheckpointRequest(domain="web", wait=True)
        code, reason, _ = refusal(lambda: cluster.coord.stub.Checkpoint(req, timeout=30))
        assert (code, reason) == (grpc.StatusCode.ABORTED, "CHECKPOINT_FAILED")
    finally:
        cluster.close()


def test_a_first_boot_whose_primary_dies_is_first_boot_failed(tmp_path: Path) -> None:
    """The secondary hangs in PrepareSecondary and the primary's host dies:
    protect --wait answers at once rather than after its whole budget."""
    cluster = Cluster(tmp_path, ("host-a", "host-b"))
    try:
        req = colo_pb2.ProtectDomainRequest(
            spec=sim_spec("web"), primary_host="host-a", secondary_host="host-b", wait=True
        )
        with _frozen(cluster.agents["host-b"].proc.pid):
            answer = cluster.coord.stub.ProtectDomain.future(req, timeout=120)
            time.sleep(0.3)
            cluster.agents["host-a"].process.kill()
            code, reason, _ = refusal(answer.result)
        assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, "FIRST_BOOT_FAILED")
    finally:
        cluster.close()


def _register_request(host: str) -> colo_pb2.RegisterAgentRequest:
    """A registration of a host nobody runs (the coordinator's view of it only)."""
    return colo_pb2.RegisterAgentRequest(
        host_id=host, incarnation="i1", grpc_address="127.0.0.1:1", data_address="127.0.0.1:1"
    )


def _register(stub: colo_pb2_grpc.CoordinatorStub, host: str) -> colo_pb2.RegisterAgentResponse:
    return stub.RegisterAgent(_register_request(host), timeout=10)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs: filled, every write to it fails with ENOSPC, for root
    too (a read-only directory does not stop root, nor an open SQLite file)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], check=True)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk: Path) -> None:
    with (disk / "filler").open("wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
            f.flush()


def test_a_store_on_a_full_disk_store_failed(tmp_path: Path, small_disk: Path) -> None:
    coord = start_coordinator(tmp_path, db=small_disk / "colo.db")
    try:
        _register(coord.stub, "host-a")  # the store works
        _fill(small_disk)
        code, reason, _ = refusal(lambda: _register(coord.stub, "host-b"))
        assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, "STORE_FAILED")
        (small_disk / "filler").unlink()
        _register(coord.stub, "host-b")  # and works again once there is room
    finally:
        coord.stop()


def test_a_watcher_that_does_not_read_is_too_slow(tmp_path: Path) -> None:
    """A WatchEvents stream nobody reads while the coordinator makes more events
    than a watcher may fall behind (WATCHER_QUEUE): re-registrations, one
    event each."""
    coord = start_coordinator(tmp_path)
    # No BDP probing: the stream's window stays small, so the coordinator's
    # queue fills rather than this process's receive buffer.
    slow = grpc.insecure_channel(coord.address, options=[("grpc.http2.bdp_probe", 0)])
    try:
        stream = colo_pb2_grpc.CoordinatorStub(slow).WatchEvents(colo_pb2.WatchEventsRequest(), timeout=120)
        _register(coord.stub, "ghost")
        pending = []
        for _ in range(WATCHER_QUEUE + 4000):
            pending.append(coord.stub.RegisterAgent.future(_register_request("ghost"), timeout=60))
            if len(pending) >= 200:
                for f in pending:
                    f.result()
                pending.clear()
        for f in pending:
            f.result()
        with pytest.raises(grpc.RpcError) as err:
            for _ in stream:
                pass
        info = error_info(err.value)
        assert (err.value.code(), info and info.reason) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "WATCHER_TOO_SLOW",
        )
    finally:
        slow.close()
        coord.stop()


def test_a_watch_of_a_coordinator_shutting_down(tmp_path: Path) -> None:
    coord = start_coordinator(tmp_path)
    got: list[grpc.RpcError] = []
    stream = coord.stub.WatchEvents(colo_pb2.WatchEventsRequest(), timeout=60)

    def follow() -> None:
        try:
            for _ in stream:
                pass
        except grpc.RpcError as exc:
            got.append(exc)

    reader = threading.Thread(target=follow)
    reader.start()
    try:
        time.sleep(0.5)  # the stream is open and following
        coord.process.stop(signal.SIGTERM)
        reader.join(timeout=30)
        (exc,) = got
        info = error_info(exc)
        assert (exc.code(), info and info.reason) == (grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN")
    finally:
        coord.stop()


def test_every_reason_has_a_test() -> None:
    """Each ErrorReason is asserted by name in this file or test_error_reasons.py."""
    here = Path(__file__).parent
    text = Path(__file__).read_text() + (here / "test_error_reasons.py").read_text()
    names = [n.removeprefix("ERROR_REASON_") for n in colo_pb2.ErrorReason.keys()]  # noqa: SIM118
    untested = [
        n for n in names if n != "UNSPECIFIED" and f'"{n}"' not in text and f"ERROR_REASON_{n}," not in text
    ]
    assert untested == []
