"""The agent's commands: what each Agent RPC does to the domains this host
holds.  Raises RpcError with the canonical code and a message that says
what to do; the servicer turns it into a status."""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc

from colo_plane import addresses, metrics, native
from colo_plane import spec as bounds
from colo_plane._proto import colo_pb2, colo_pb2_grpc
from colo_plane.agent import datalink, domains, handshake, nicproxy, proxy
from colo_plane.agent.arming import Arming, started_by
from colo_plane.agent.flags import POLL_US
from colo_plane.agent.primary import Outcome, PrimaryLink
from colo_plane.agent.replica import Replica
from colo_plane.agent.secondary import ProtocolError
from colo_plane.agent.syncpoints import Role, SyncSink
from colo_plane.native import TestHooks
from colo_plane.rpc import fail, seconds

log = logging.getLogger(__name__)

ACCEPT_TIMEOUT = 30.0
FIRST_BOOT_TIMEOUT = 120.0
CHECKPOINT_TIMEOUT = 30.0
CONNECT_TIMEOUT = 5.0
REPLY_TIMEOUT = 0.5  # the secondary's reply, before the primary asks for a checkpoint
SECRET_BYTES = 32


@dataclass(frozen=True)
class AgentConfig:
    host_id: str
    data_address: str  # advertised: where primaries connect
    verify: bool = False  # verify every pair, whatever its spec says
    hooks: TestHooks = field(default_factory=TestHooks)
    service_host: str = "127.0.0.1"  # where primaries' proxies serve clients
    advertise_host: str = ""  # what clients dial instead of service_host (a wildcard, say)
    poll_us: int = POLL_US  # the proxy's threads busy-poll this long before sleeping


def _error_metadata(exc: BaseException) -> dict[str, str]:
    """The C error code's name (ErrorInfo metadata "native_error"), when C failed."""
    if isinstance(exc, native.NativeError):
        code = exc.code
        return {"native_error": code.name if isinstance(code, native.ErrorCode) else str(code)}
    return {}


def _processed(replica: Replica) -> int:
    """The last client request the guest processed (0 without a guest service)."""
    try:
        return replica.dom.service_seq()
    except native.NativeError:
        return 0


class AgentCore:
    def __init__(
        self,
        config: AgentConfig,
        listener: datalink.DataListener,
        sink: SyncSink,
        coordinator: colo_pb2_grpc.CoordinatorStub | None = None,
    ) -> None:
        self.config = config
        self.listener = listener
        self.sink = sink
        self.coordinator = coordinator
        self.replicas: dict[str, Replica] = {}
        self._standing_down: dict[str, asyncio.Task[None]] = {}

    # -- checks ----------------------------------------------------------------

    def _held(self, domain: str) -> Replica:
        replica = self.replicas.get(bounds.check_domain(domain))
        if replica is None:
            fail(
                grpc.StatusCode.NOT_FOUND,
                f"this agent ({self.config.host_id}) holds no domain {domain!r}",
                reason=colo_pb2.ERROR_REASON_DOMAIN_NOT_HELD,
            )
        return replica

    @staticmethod
    def _not_stale(replica: Replica, generation: int, what: str) -> None:
        if generation < replica.generation:
            metrics.FENCED.labels("command").inc()
            fail(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{what} for {replica.domain} carries generation {generation}, older than the generation "
                f"{replica.generation} this agent holds: it comes from a superseded decision and is refused; "
                "read the pair again (colo pair) and retry with its current generation",
                reason=colo_pb2.ERROR_REASON_STALE_GENERATION,
            )

    @staticmethod
    def _secret(secret: bytes) -> bytes:
        if len(secret) < 16:
            fail(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"pair_secret must be at least 16 random bytes (got {len(secret)})",
                reason=colo_pb2.ERROR_REASON_INVALID_FIELD,
            )
        return secret

    def _verify(self, spec: colo_pb2.DomainSpec) -> bool:
        return spec.verify or self.config.verify

    async def _drop(self, domain: str) -> None:
        replica = self.replicas.pop(domain, None)
        if replica is not None:
            self.listener.forget(domain)
            replica.disarm()
            await replica.close()
            metrics.DOMAINS_HELD.labels(replica.role.value).dec()
            metrics.domain_released(domain)

    def _add(self, replica: Replica) -> None:
        self.replicas[replica.domain] = replica
        metrics.DOMAINS_HELD.labels(replica.role.value).inc()
        metrics.domain_held(replica.domain, replica.role.value)

    def _role_request(
        self, req: colo_pb2.PrepareSecondaryRequest | colo_pb2.StartPrimaryRequest, role: Role
    ) -> tuple[bytes, Replica | None]:
        """The checks PrepareSecondary and StartPrimary share: arguments, the
        generation, and the host not holding the other role.  Returns the
        secret and the replica already held, if any."""
        bounds.check_role_request(req)
        secret = self._secret(req.pair_secret)
        held = self.replicas.get(req.domain)
        if held is not None:
            what = "PrepareSecondary" if role is Role.SECONDARY else "StartPrimary"
            self._not_stale(held, req.generation, what)
            if held.role is not role:
                fail(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"this host holds {req.domain} as its {held.role.value}: "
                    + (
                        "place the secondary on another host"
                        if role is Role.SECONDARY
                        else "Promote it first, or choose another host"
                    ),
                    reason=colo_pb2.ERROR_REASON_ROLE_CONFLICT,
                )
        return secret, held

    async def _open(self, spec: colo_pb2.DomainSpec, role: Role) -> native.Domain:
        """The domain for spec on this host (sim: created; xen: attached), paused."""
        try:
            return await asyncio.to_thread(
                domains.open_domain, spec, self.config.host_id, secondary=role is Role.SECONDARY
            )
        except native.NativeError as exc:
            fail(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"cannot open the {role.value} domain: {exc}",
                reason=colo_pb2.ERROR_REASON_CANNOT_OPEN,
                metadata=_error_metadata(exc),
            )

    # -- PrepareSecondary --------------------------------------------------------

    async def prepare_secondary(
        self, req: colo_pb2.PrepareSecondaryRequest
    ) -> colo_pb2.PrepareSecondaryResponse:
        secret, old = self._role_request(req, Role.SECONDARY)
        if old is not None:
            if old.generation == req.generation and old.sock is None:
                return self._prepared(req)  # a retry of the same request
            await self._drop(req.domain)
        dom = await self._open(req.spec, Role.SECONDARY)
        replica = Replica(
            req.domain,
            req.generation,
            Role.SECONDARY,
            req.spec,
            dom,
            self._verify(req.spec),
            epoch=0,
            peer_host=req.peer_host_id,
        )
        self._add(replica)
        expected = self.listener.expect(req.domain, req.generation, secret, req.peer_host_id)
        replica.accept_task = asyncio.create_task(
            self._await_primary(replica, expected, seconds(req.accept_timeout, ACCEPT_TIMEOUT))
        )
        log.info(
            "%s: secondary prepared at generation %d, waiting for %s",
            req.domain,
            req.generation,
            req.peer_host_id or "the primary",
        )
        return self._prepared(req)

    def _prepared(self, req: colo_pb2.PrepareSecondaryRequest) -> colo_pb2.PrepareSecondaryResponse:
        return colo_pb2.PrepareSecondaryResponse(
            domain=req.domain,
            generation=req.generation,
            epoch=req.epoch,
            data_address=self.config.data_address,
        )

    async def _await_primary(self, replica: Replica, expected: datalink.Expected, timeout: float) -> None:
        """The primary's data connection, then its proxy connection."""
        try:
            sock = await asyncio.wait_for(expected.data, timeout)
        except TimeoutError:
            log.warning(
                "%s: no primary connected within %.0f s; releasing the secondary", replica.domain, timeout
            )
            replica.accept_task = None
            if self.replicas.get(replica.domain) is replica:
                await self._drop(replica.domain)
            return
        replica.start_secondary(sock, self.sink)
        try:
            link = await asyncio.wait_for(expected.proxy, timeout)
        except TimeoutError:
            log.warning(
                "%s: the primary opened no proxy connection; client requests are not mirrored here",
                replica.domain,
            )
            return
        if replica.spec.HasField("network"):
            self._secondary_nic(replica, link)
            return
        replica.proxy_task = asyncio.create_task(
            proxy.SecondaryProxy(replica.domain, replica.dom, poll_us=self.config.poll_us).run(link),
            name=f"proxy-{replica.domain}",
        )

    @staticmethod
    def _secondary_nic(replica: Replica, link: socket.socket) -> None:
        """The secondary's NIC proxy, fed over the pair's proxy link; it stays
        with the replica (a promotion bridges it to the uplink)."""
        if replica.nic is not None:
            replica.nic.close()  # a new primary's link: the old proxy's frames are gone with it
            replica.nic = None
        nic = domains.guest_nic(replica.spec.network, secondary=True)
        try:
            replica.nic = nicproxy.start_secondary(replica.spec, nic, link)
        except (native.NativeError, OSError, ValueError) as exc:
            link.close()
            replica.last_error = f"NIC proxy on {nic}: {exc}"
            log.error("%s: cannot start the NIC proxy on %s: %s", replica.domain, nic, exc)
            return
        if replica.loop is not None:
            replica.loop.netproxy = replica.nic
        log.info("%s: NIC proxy on %s, fed by the primary", replica.domain, nic)

    # -- StartPrimary ------------------------------------------------------------

    async def start_primary(self, req: colo_pb2.StartPrimaryRequest) -> colo_pb2.StartPrimaryResponse:
        secret, replica = self._role_request(req, Role.PRIMARY)
        if replica is not None and replica.gone():
            fail(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"the domain {req.domain} on {self.config.host_id} is gone (destroyed or crashed): "
                "there is no guest here to protect",
                reason=colo_pb2.ERROR_REASON_DOMAIN_GONE,
            )
        if replica is None and not req.create_domain and req.spec.WhichOneof("backend") == "sim":
            # Re-protection: the pair's data lives in the guest this host ran.  A new
            # empty domain copied over the secondary would wipe it.
            fail(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"this agent ({self.config.host_id}) holds no domain {req.domain!r} to re-protect; "
                "refusing to create an empty one over the pair's data",
                reason=colo_pb2.ERROR_REASON_NO_GUEST,
            )
        if replica is None:
            dom = await self._open(req.spec, Role.PRIMARY)
            replica = Replica(req.domain, req.generation, Role.PRIMARY, req.spec, dom, self._verify(req.spec))
            self._add(replica)
        async with replica.busy:
            await replica.disconnect()
            replica.generation, replica.peer_host = req.generation, req.peer_host_id
            replica.state = colo_pb2.PAIR_STATE_SYNCING
            await self._serve_clients(replica)
            sock = await self._connect(req, secret, handshake.DATA)
            replica.sock = sock
            # Mirror client requests from before the snapshot on: the secondary
            # runs every request after the first boot's last_seq.
            link_sock = await self._connect(req, secret, handshake.PROXY)
            assert replica.proxy is not None
            await replica.proxy.attach(link_sock)
            replica.link = PrimaryLink(
                domain=req.domain,
                generation=req.generation,
                dom=replica.dom,
                sock=sock,
                verify=replica.verify,
                sink=self.sink,
                hooks=self.config.hooks,
                release=replica.proxy.data_path if isinstance(replica.proxy, proxy.PrimaryProxy) else None,
                netproxy=replica.proxy.data_path if isinstance(replica.proxy, nicproxy.PrimaryNic) else None,
            )
            outcome = await self._run_link(
                replica,
                replica.link.first_boot,
                req.epoch,
                seconds(req.first_boot_timeout, FIRST_BOOT_TIMEOUT),
            )
            replica.epoch, replica.state = req.epoch, colo_pb2.PAIR_STATE_PROTECTED
            replica.last_stats, replica.last_verify = outcome.stats, outcome.verify
            replica.proxy.checkpoint_done(req.epoch, outcome.stats.last_seq)
        log.info(
            "%s: first boot done at generation %d epoch %d (%d pages, %.1f ms paused)",
            req.domain,
            req.generation,
            req.epoch,
            outcome.stats.pages,
            outcome.stats.pause_ns / 1e6,
        )
        return colo_pb2.StartPrimaryResponse(
            domain=req.domain,
            generation=req.generation,
            epoch=req.epoch,
            service_address=replica.service_address,
            stats=outcome.stats.proto(),
            verify=outcome.verify.proto(),
        )

    async def _serve_clients(self, replica: Replica) -> None:
        """Starts the primary's proxy on the domain's service address, once."""
        if replica.proxy is not None:
            return
        if replica.spec.HasField("network"):
            await self._serve_nic(replica)
            return
        spec = replica.spec.service
        replica.arming = Arming(
            replica.domain,
            host_id=self.config.host_id,
            coordinator=self.coordinator,
            pair=lambda: (replica.generation, replica.epoch),
        )
        replica.proxy = proxy.PrimaryProxy(
            replica.domain,
            replica.dom,
            arming=replica.arming,
            reply_timeout=seconds(spec.reply_timeout, REPLY_TIMEOUT),
            poll_us=self.config.poll_us,
        )
        try:
            bound = await replica.proxy.start(self.config.service_host, spec.port)
            if self.config.advertise_host:
                bound = addresses.join(self.config.advertise_host, addresses.parse(bound)[1])
            replica.service_address = bound
        except OSError as exc:
            replica.proxy = replica.arming = None
            fail(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"cannot serve {replica.domain} on {self.config.service_host}:{spec.port}: {exc}",
                reason=colo_pb2.ERROR_REASON_CANNOT_SERVE,
            )
        log.info("%s: serving clients on %s", replica.domain, replica.service_address)

    async def _serve_nic(self, replica: Replica) -> None:
        """The primary's NIC proxy on spec.network (clients reach the guest's own
        address through the uplink: there is no service address); a promoted
        secondary's own proxy, bridged to the uplink."""
        network = replica.spec.network
        promoted = replica.nic is not None  # its guest is the secondary's
        try:
            if replica.nic is not None:
                nic, replica.nic = replica.nic, None
                replica.proxy = nicproxy.PrimaryNic.promoted(replica.domain, nic, network)
            else:
                replica.arming = Arming(
                    replica.domain,
                    host_id=self.config.host_id,
                    coordinator=self.coordinator,
                    pair=lambda: (replica.generation, replica.epoch),
                )
                primary = nicproxy.PrimaryNic(
                    replica.domain,
                    network,
                    replica.spec,
                    arming=replica.arming,
                    compare_timeout=seconds(replica.spec.service.reply_timeout, REPLY_TIMEOUT),
                )
                await primary.start()
                replica.proxy = primary
        except (native.NativeError, OSError, ValueError) as exc:
            replica.proxy = replica.arming = None
            fail(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"cannot start the NIC proxy of {replica.domain} on {network.interface} / "
                f"{network.uplink}: {exc}",
                reason=colo_pb2.ERROR_REASON_CANNOT_SERVE,
            )
        log.info(
            "%s: NIC proxy between %s and %s",
            replica.domain,
            network.uplink,
            domains.guest_nic(network, secondary=promoted),
        )

    async def _connect(self, req: colo_pb2.StartPrimaryRequest, secret: bytes, channel: int) -> socket.socket:
        try:
            return await datalink.connect(
                req.peer_data_address,
                req.domain,
                req.generation,
                secret,
                timeout=CONNECT_TIMEOUT,
                channel=channel,
            )
        except handshake.HandshakeError as exc:
            metrics.HANDSHAKE_FAILURES.labels(exc.reason).inc()
            fail(
                grpc.StatusCode.PERMISSION_DENIED,
                f"secondary at {req.peer_data_address} refused the data connection ({exc}); "
                "prepare it again with this generation's secret",
                reason=colo_pb2.ERROR_REASON_PEER_REFUSED,
            )
        except (OSError, TimeoutError) as exc:
            fail(
                grpc.StatusCode.UNAVAILABLE,
                f"cannot reach the secondary's data port {req.peer_data_address}: {exc or 'timed out'}",
                reason=colo_pb2.ERROR_REASON_PEER_UNREACHABLE,
            )
        except ValueError as exc:
            fail(grpc.StatusCode.INVALID_ARGUMENT, str(exc), reason=colo_pb2.ERROR_REASON_INVALID_FIELD)

    async def _run_link(
        self, replica: Replica, step: Callable[[int], Outcome], epoch: int, timeout: float
    ) -> Outcome:
        """Runs one blocking protocol step in a thread, bounded by timeout."""
        task = asyncio.ensure_future(asyncio.to_thread(step, epoch))
        try:
            return await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            if replica.sock is not None:
                replica.sock.shutdown(socket.SHUT_RDWR)  # unblocks the thread
            await asyncio.gather(task, return_exceptions=True)
            replica.last_error = f"epoch {epoch} timed out after {timeout:.1f} s"
            fail(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"{replica.domain}: epoch {epoch} did not complete within {timeout:.1f} s; the data "
                "connection was closed and the pair needs re-protection",
                reason=colo_pb2.ERROR_REASON_EPOCH_TIMED_OUT,
            )
        except native.Disarmed as exc:
            fail(
                grpc.StatusCode.ABORTED,
                f"{replica.domain}: armed epoch {epoch} never started: {exc.detail}",
                reason=colo_pb2.ERROR_REASON_NEVER_STARTED,
            )
        except (native.NativeError, ProtocolError, OSError) as exc:
            replica.last_error = f"epoch {epoch}: {exc}"
            log.warning("%s: epoch %d failed: %s", replica.domain, epoch, exc)
            fail(
                grpc.StatusCode.ABORTED,
                f"{replica.domain}: epoch {epoch} failed: {exc}; the secondary keeps its last whole "
                "checkpoint and the pair needs re-protection",
                reason=colo_pb2.ERROR_REASON_EPOCH_FAILED,
                metadata=_error_metadata(exc),
            )

    # -- Checkpoint --------------------------------------------------------------

    async def checkpoint(self, req: colo_pb2.AgentCheckpointRequest) -> colo_pb2.AgentCheckpointResponse:
        replica = self._held(req.domain)
        bounds.check_generation(req.generation)
        self._not_stale(replica, req.generation, "Checkpoint")
        if req.generation > replica.generation:
            fail(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"Checkpoint for {req.domain} at generation {req.generation}, "
                f"but this agent holds generation "
                f"{replica.generation}: run StartPrimary for the new generation first",
                reason=colo_pb2.ERROR_REASON_FUTURE_GENERATION,
            )
        if replica.role is not Role.PRIMARY:
            fail(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"this host is the secondary of {req.domain}: send Checkpoint to the primary's agent",
                reason=colo_pb2.ERROR_REASON_ROLE_CONFLICT,
            )
        if replica.gone():
            fail(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"the primary domain {req.domain} on {self.config.host_id} is gone (destroyed or "
                "crashed): nothing to checkpoint; the secondary holds the last whole copy",
                reason=colo_pb2.ERROR_REASON_DOMAIN_GONE,
            )
        fired = replica.arming.fire(req.epoch, req.generation) if replica.arming is not None else None
        if fired is not None:
            return await asyncio.shield(fired)  # the armed call's answer
        link = replica.link
        if link is None or link.broken:
            fail(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{req.domain} has no working secondary here ({link.broken if link else 'unprotected'}): "
                "re-protect it (StartPrimary) before checkpointing",
                reason=colo_pb2.ERROR_REASON_NO_SECONDARY,
            )
        if req.epoch <= replica.epoch:
            fail(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"epoch {req.epoch} is not above the last epoch {replica.epoch} of {req.domain}: "
                "epochs only rise; take the next one from the pair",
                reason=colo_pb2.ERROR_REASON_EPOCH_NOT_ABOVE,
            )
        if replica.busy.locked():
            fail(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{req.domain} is busy with another checkpoint or command: wait for it to finish",
                reason=colo_pb2.ERROR_REASON_BUSY,
            )
        arm = seconds(req.arm, 0.0)
        if arm and (replica.arming is None or replica.proxy is None or replica.proxy.data_path is None):
            fail(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{req.domain} has no proxy here to arm a checkpoint",
                reason=colo_pb2.ERROR_REASON_CANNOT_SERVE,
            )
        async with replica.busy:
            timeout = seconds(req.timeout, CHECKPOINT_TIMEOUT)
            if arm:
                outcome = await self._armed(replica, link, req, arm, timeout)
            else:
                replica.state = colo_pb2.PAIR_STATE_CHECKPOINTING
                outcome = await self._checkpointed(
                    replica, self._run_link(replica, link.checkpoint, req.epoch, timeout)
                )
            if req.final:  # switchover: the guest stays paused so the secondary's copy is the last word
                replica.dom.pause()
        return self._answer(req, outcome)

    async def _checkpointed(self, replica: Replica, run: Awaitable[Outcome]) -> Outcome:
        """Waits for a checkpoint and files its outcome on the replica."""
        try:
            outcome = await run
        except BaseException:
            replica.state = colo_pb2.PAIR_STATE_UNPROTECTED
            raise
        replica.epoch, replica.state = outcome.epoch, colo_pb2.PAIR_STATE_PROTECTED
        replica.checkpoints += 1
        replica.last_stats, replica.last_verify = outcome.stats, outcome.verify
        if replica.arming is not None:
            replica.arming.covered(outcome.stats.last_seq)  # released in C at SECONDARY_RESUMED
        return outcome

    async def _armed(
        self,
        replica: Replica,
        link: PrimaryLink,
        req: colo_pb2.AgentCheckpointRequest,
        arm: float,
        timeout: float,
    ) -> Outcome:
        """An armed checkpoint (arming.py): starts in C at the first held reply,
        a second call for the epoch, or after arm seconds (docs/protocol.md)."""
        arming = replica.arming
        assert arming is not None
        wait = arming.waiter(req.epoch, arm)
        run = self._run_link(
            replica, lambda epoch: link.armed_checkpoint(epoch, wait), req.epoch, arm + timeout
        )
        return await arming.run(
            req, self._checkpointed(replica, run), lambda outcome: self._answer(req, outcome)
        )

    @staticmethod
    def _answer(req: colo_pb2.AgentCheckpointRequest, outcome: Outcome) -> colo_pb2.AgentCheckpointResponse:
        resp = colo_pb2.AgentCheckpointResponse(
            domain=req.domain,
            generation=req.generation,
            epoch=req.epoch,
            stats=outcome.stats.proto(),
            verify=outcome.verify.proto(),
            trigger=req.trigger,
        )
        if outcome.armed is not None:
            started_by(resp, outcome.armed)
        return resp

    # -- role changes --------------------------------------------------------------

    def _newer(self, replica: Replica, generation: int, what: str) -> None:
        bounds.check_generation(generation)
        if generation <= replica.generation:
            metrics.FENCED.labels("command").inc()
            fail(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{what} for {replica.domain} needs a generation above the held {replica.generation}, got "
                f"{generation}: every role change raises the generation",
                reason=colo_pb2.ERROR_REASON_GENERATION_NOT_ABOVE,
            )

    async def promote(self, req: colo_pb2.PromoteRequest) -> colo_pb2.PromoteResponse:
        replica = self._held(req.domain)
        self._newer(replica, req.generation, "Promote")
        if replica.role is not Role.SECONDARY:
            fail(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"this host is already the primary of {req.domain}",
                reason=colo_pb2.ERROR_REASON_ROLE_CONFLICT,
            )
        if not replica.whole_copy():
            fail(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"this secondary of {req.domain} holds no whole copy: its first boot never completed, "
                "and promoting it would serve an empty guest; the primary holds the only copy",
                reason=colo_pb2.ERROR_REASON_NO_GUEST,
            )
        async with replica.busy:
            # A torn checkpoint was dropped in C: the guest runs from its last
            # whole checkpoint, plus the forwarded requests it processed since.
            await replica.disconnect()  # its last epoch is read once the thread has ended
            replica.generation, replica.role = req.generation, Role.PRIMARY
            replica.state, replica.peer_host = colo_pb2.PAIR_STATE_UNPROTECTED, ""
            if replica.dom.paused:
                replica.dom.unpause()
            await self._serve_clients(replica)
        metrics.DOMAINS_HELD.labels(Role.SECONDARY.value).dec()
        metrics.DOMAINS_HELD.labels(Role.PRIMARY.value).inc()
        metrics.domain_held(req.domain, Role.PRIMARY.value)
        log.warning(
            "%s: promoted to primary at generation %d (runs from epoch %d)",
            req.domain,
            req.generation,
            replica.epoch,
        )
        return colo_pb2.PromoteResponse(
            domain=req.domain,
            generation=req.generation,
            epoch=replica.epoch,
            service_address=replica.service_address,
            last_processed_seq=_processed(replica),
        )

    async def set_unprotected(self, req: colo_pb2.SetUnprotectedRequest) -> colo_pb2.SetUnprotectedResponse:
        replica = self._held(req.domain)
        self._newer(replica, req.generation, "SetUnprotected")
        if replica.role is not Role.PRIMARY:
            fail(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"this host is the secondary of {req.domain}, not its primary",
                reason=colo_pb2.ERROR_REASON_ROLE_CONFLICT,
            )
        replica.disarm()
        async with replica.busy:
            await replica.disconnect()
            replica.generation, replica.peer_host = req.generation, ""
            replica.state = colo_pb2.PAIR_STATE_UNPROTECTED
            released = replica.proxy.unprotect() if replica.proxy is not None else 0
        log.warning("%s: running unprotected at generation %d", req.domain, req.generation)
        return colo_pb2.SetUnprotectedResponse(
            domain=req.domain, generation=req.generation, epoch=replica.epoch, released_replies=released
        )

    async def release(self, req: colo_pb2.ReleaseRequest) -> colo_pb2.ReleaseResponse:
        replica = self.replicas.get(bounds.check_domain(req.domain))
        if replica is None:
            return colo_pb2.ReleaseResponse(domain=req.domain, generation=req.generation, was_held=False)
        self._not_stale(replica, req.generation, "Release")
        replica.disarm()
        async with replica.busy:
            if req.keep_running and replica.role is Role.PRIMARY:
                await replica.disconnect()
                replica.state = colo_pb2.PAIR_STATE_UNPROTECTED
                if replica.proxy is not None:
                    replica.proxy.unprotect()  # nothing left to wait for: replies go straight out
            else:
                await self._drop(req.domain)
        log.info("%s: released (%s)", req.domain, req.reason or "no reason given")
        return colo_pb2.ReleaseResponse(
            domain=req.domain, generation=replica.generation, epoch=replica.epoch, was_held=True
        )

    # -- GetStatus ---------------------------------------------------------------

    async def status(self, req: colo_pb2.GetStatusRequest) -> list[colo_pb2.DomainStatus]:
        chosen = [self._held(req.domain)] if req.domain else list(self.replicas.values())
        out = []
        for replica in chosen:
            digest = await asyncio.to_thread(replica.digest) if req.include_hash else None
            out.append(replica.status(digest))
        return out

    # -- standing down -------------------------------------------------------------

    def superseded(self, items: list[colo_pb2.Superseded]) -> None:
        """The coordinator says these pairs moved on without this host (in a
        heartbeat or registration answer): stand down at once, so clients still
        connected here go and find the new primary instead of waiting on output
        this host may never release."""
        for item in items:
            replica = self.replicas.get(item.domain)
            if (
                replica is None
                or replica.generation >= item.generation
                or replica.stood_down
                or item.domain in self._standing_down
            ):
                continue
            task = asyncio.create_task(self._stand_down(replica, item), name=f"stand-down-{item.domain}")
            self._standing_down[item.domain] = task
            task.add_done_callback(functools.partial(self._stood_down, item.domain))

    def _stood_down(self, domain: str, task: asyncio.Task[None]) -> None:
        self._standing_down.pop(domain, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: standing down failed", domain, exc_info=task.exception())

    async def _stand_down(self, replica: Replica, item: colo_pb2.Superseded) -> None:
        """Pause the guest, stop replicating and serving, release nothing; wait for Release."""
        log.warning(
            "%s: superseded (generation %d here, %d at the coordinator: %s); standing down",
            replica.domain,
            replica.generation,
            item.generation,
            item.message or "no reason given",
        )
        replica.disarm()
        async with replica.busy:
            replica.stood_down = True
            await replica.disconnect()
            if not replica.gone():
                replica.dom.pause()
            replica.state = colo_pb2.PAIR_STATE_UNPROTECTED
            if replica.proxy is not None:
                await replica.stop_serving()  # clients reconnect and ask where the service is now
                replica.service_address = ""

    def destroy_domains(self, role: Role) -> list[str]:
        """Test hook: destroys every sim domain held in role, as `xl destroy` would
        (the agent keeps the role and finds the guest gone)."""
        gone = []
        for replica in self.replicas.values():
            if replica.role is role and replica.dom.backend == "sim":
                replica.dom.sim_destroy()
                gone.append(replica.domain)
        log.warning("TEST HOOK: destroyed the %s domain(s) %s", role.value, ", ".join(gone) or "(none)")
        return gone

    async def close(self) -> None:
        for task in list(self._standing_down.values()):
            task.cancel()
        await asyncio.gather(*self._standing_down.values(), return_exceptions=True)
        for domain in list(self.replicas):
            await self._drop(domain)
