"""`colo coordinator`: the coordinator daemon."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from typing import Any

import grpc

from colo_plane import sdnotify, serving, spec
from colo_plane._proto import colo_pb2, colo_pb2_grpc
from colo_plane.coordinator.core import Coordinator
from colo_plane.coordinator.servicer import CoordinatorServicer
from colo_plane.coordinator.settings import Settings
from colo_plane.coordinator.store import SqliteStore
from colo_plane.grpc_metrics import MetricsInterceptor

log = logging.getLogger(__name__)

SERVICE = colo_pb2.DESCRIPTOR.services_by_name["Coordinator"].full_name
SHUTDOWN_GRACE = 5.0


def _flag_within(flag: str, value: float, span: spec.Span) -> None:
    """The daemon's defaults obey the same bounds as a spec's fields."""
    ns = round(value * 1e9)
    if not span.low <= ns <= span.high:
        raise SystemExit(
            f"colo coordinator: {flag} must be {spec.human(span.low)}..{spec.human(span.high)}, "
            f"got {value} s: {span.hint}"
        )


def settings_from(args: argparse.Namespace) -> Settings:
    keys = tuple(k for k in args.failure_domain_keys.split(",") if k)
    if args.heartbeat_timeout <= args.heartbeat_interval:
        raise SystemExit("colo coordinator: --heartbeat-timeout must be longer than --heartbeat-interval")
    _flag_within("--checkpoint-interval", args.checkpoint_interval, spec.CHECKPOINT_INTERVAL)
    _flag_within("--checkpoint-timeout", args.checkpoint_timeout, spec.CHECKPOINT_TIMEOUT)
    return Settings(
        heartbeat_interval=args.heartbeat_interval,
        heartbeat_timeout=args.heartbeat_timeout,
        startup_grace=args.startup_grace,
        checkpoint_interval=args.checkpoint_interval,
        checkpoint_timeout=args.checkpoint_timeout,
        arm_checkpoints=not args.no_arm_checkpoints,
        failure_domain_keys=keys,
    )


@dataclass
class Running:
    """A started coordinator (for the daemon, and in-process for benches)."""

    core: Coordinator
    servicer: CoordinatorServicer
    server: grpc.aio.Server
    health_servicer: Any  # grpc_health.v1.health.aio.HealthServicer (untyped)
    address: str

    async def stop(
        self, grace: float = SHUTDOWN_GRACE, *, announce: float = serving.SHUTDOWN_ANNOUNCE
    ) -> None:
        await serving.shutdown(
            self.server, self.health_servicer, grace, announce=announce, before_stop=self.servicer.end_streams
        )
        await self.core.close()
        self.core.store.close()


async def start(db: str, listen: str, settings: Settings) -> Running:
    core = Coordinator(SqliteStore(db), settings)
    await core.start()
    # No SO_REUSEPORT: a second coordinator on the same address must fail to
    # start, not silently share the port with the first.
    server = grpc.aio.server(
        interceptors=[MetricsInterceptor()], options=[*serving.SERVER_OPTIONS, ("grpc.so_reuseport", 0)]
    )
    servicer = CoordinatorServicer(core)
    colo_pb2_grpc.add_CoordinatorServicer_to_server(servicer, server)
    health = serving.add_health_and_reflection(server, [SERVICE])
    address = serving.bind(server, listen)
    await server.start()
    await serving.set_serving(health, [SERVICE])
    return Running(core, servicer, server, health, address)


async def run(args: argparse.Namespace) -> int:
    running = await start(args.db, args.listen, settings_from(args))
    metrics_address = serving.start_metrics(args.metrics_listen, "coordinator")
    serving.write_ready_file(
        args.ready_file, {"grpc": running.address, "metrics": metrics_address, "db": args.db}
    )
    log.info(
        "coordinator serving gRPC on %s, metrics on %s, store %s",
        running.address,
        metrics_address or "(off)",
        args.db,
    )
    watchdog = sdnotify.ready(f"serving gRPC on {running.address}")
    await serving.stop_signals().wait()
    log.info("coordinator shutting down")
    sdnotify.stopping(watchdog)
    await running.stop()
    return 0
