"""`colo agent`: the host agent daemon."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import uuid

import grpc

from colo_plane import addresses, native, sdnotify, serving
from colo_plane._proto import colo_pb2, colo_pb2_grpc
from colo_plane.agent import datalink
from colo_plane.agent.core import AgentConfig, AgentCore
from colo_plane.agent.registration import Registration
from colo_plane.agent.reporter import SyncReporter
from colo_plane.agent.servicer import AgentServicer
from colo_plane.agent.syncpoints import Role
from colo_plane.native import TestHooks

log = logging.getLogger(__name__)

SERVICE = colo_pb2.DESCRIPTOR.services_by_name["Agent"].full_name
SHUTDOWN_GRACE = 5.0


def _labels(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"colo agent: --label wants key=value, got {pair!r}")
        out[key] = value
    return out


# The replication threads need the GIL between their native steps while the
# event loop serves RPCs; at the default 5 ms a checkpoint could wait that
# long for each step.  0.2 ms bounds the wait at a small cost in switches.
GIL_SWITCH_INTERVAL = 0.0002


WILDCARDS = frozenset({"0.0.0.0", "::", ""})


def advertised(bound: str, advertise_host: str) -> str:
    """What the coordinator and peers dial for a bound address: the
    advertised host with the bound port.  A wildcard is not dialable."""
    host, port = addresses.parse(bound)
    if advertise_host:
        return addresses.join(advertise_host, port)
    if host in WILDCARDS:
        raise SystemExit(
            f"colo agent: listening on {bound} needs --advertise-host: the coordinator and the peer "
            "host dial the addresses this agent advertises, and a wildcard is not one they can reach"
        )
    return bound


async def run(args: argparse.Namespace) -> int:
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    if not 0 <= args.poll_us <= native.MAX_POLL_US:
        raise SystemExit(f"colo agent: --poll-us must be 0..{native.MAX_POLL_US}, got {args.poll_us}")
    for address in (args.listen, args.data_listen, addresses.join(args.service_host or "0.0.0.0", 0)):
        advertised(address, args.advertise_host)  # refuse a wildcard before binding anything
    if args.advertise_grpc:
        try:
            addresses.parse(args.advertise_grpc)
        except ValueError as exc:
            raise SystemExit(f"colo agent: --advertise-grpc: {exc}") from None
    incarnation = uuid.uuid4().hex
    listener = datalink.DataListener(args.data_listen)
    data_address = advertised(await listener.start(), args.advertise_host)
    channel = grpc.aio.insecure_channel(args.coordinator, options=serving.CHANNEL_OPTIONS)
    stub = colo_pb2_grpc.CoordinatorStub(channel)
    reporter = SyncReporter(stub, args.host_id)
    hooks = TestHooks(send_only_a=args.test_send_only_a, cut_after_bytes=args.test_cut_checkpoint_after)
    if hooks != TestHooks():
        log.warning("TEST HOOKS ON: %s -- this agent breaks replication on purpose", hooks)
    core = AgentCore(
        AgentConfig(
            args.host_id,
            data_address,
            verify=args.verify,
            hooks=hooks,
            service_host=args.service_host,
            advertise_host=args.advertise_host,
            poll_us=args.poll_us,
        ),
        listener,
        reporter.submit,
        stub,
    )

    server = serving.new_server()
    colo_pb2_grpc.add_AgentServicer_to_server(AgentServicer(core, incarnation), server)
    health_servicer = serving.add_health_and_reflection(server, [SERVICE])
    bound = advertised(serving.bind(server, args.listen), args.advertise_host)
    grpc_address = args.advertise_grpc or bound  # what the coordinator dials
    metrics_address = serving.start_metrics(args.metrics_listen, "agent")
    await server.start()
    await serving.set_serving(health_servicer, [SERVICE])
    registration = Registration(
        stub,
        coordinator=args.coordinator,
        host_id=args.host_id,
        incarnation=incarnation,
        grpc_address=grpc_address,
        data_address=data_address,
        service_host=args.service_host,
        labels=_labels(args.label),
        statuses=lambda: [r.status() for r in core.replicas.values()],
        superseded=core.superseded,
    )
    serving.write_ready_file(
        args.ready_file,
        {
            "host_id": args.host_id,
            "grpc": bound,
            "data": data_address,
            "metrics": metrics_address,
            "incarnation": incarnation,
        },
    )
    log.info(
        "agent %s serving gRPC on %s, data on %s, metrics on %s",
        args.host_id,
        grpc_address,
        data_address,
        metrics_address or "(off)",
    )

    if args.test_destroy_on_signal:
        log.warning("TEST HOOKS ON: SIGUSR1 / SIGUSR2 destroy this host's primary / secondary sim domains")
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, core.destroy_domains, Role.PRIMARY)
        loop.add_signal_handler(signal.SIGUSR2, core.destroy_domains, Role.SECONDARY)
    watchdog = sdnotify.ready(f"serving gRPC on {grpc_address}, data on {data_address}")
    await serving.stop_signals().wait()
    log.info("agent %s shutting down", args.host_id)
    sdnotify.stopping(watchdog)
    await serving.shutdown(server, health_servicer, SHUTDOWN_GRACE)
    await registration.close()
    await core.close()
    await listener.close()
    await reporter.drain(1.0)
    await reporter.close()
    await channel.close(None)
    return 0
