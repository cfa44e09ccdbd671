"""What both daemons' gRPC servers share: interceptor, health, reflection,
the /metrics endpoint and graceful shutdown on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import _async as health_aio  # what health.aio names; typed as Any
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2
from grpc_reflection.v1alpha._async import ReflectionServicer
from prometheus_client import start_http_server

from colo_plane import addresses, metrics
from colo_plane.grpc_metrics import MetricsInterceptor

log = logging.getLogger(__name__)

# grpc_health ships no type information for its asyncio servicer.
HealthServicer = Any

# Keepalive that clients and servers agree on (a client pinging more often
# than the server permits is disconnected with GOAWAY): servers accept a
# ping every 500 ms, more often than any channel here sends.
SERVER_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 500),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.keepalive_permit_without_calls", 1),
]
# A peer that comes back (a restarted coordinator) is reconnected to within
# a second: gRPC's default backoff grows to 120 s, and agents took 12-15 s
# to find a coordinator that had been away for a few.
RECONNECT_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
    ("grpc.min_reconnect_backoff_ms", 1_000),  # how long one connection attempt may take
]
CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    *RECONNECT_OPTIONS,
]
# The coordinator's channels to agents' Agent API: a ping every second
# (gRPC sends none more often) that must be answered within a second, so a
# command path that stops delivering (a one-way partition: heartbeats still
# arrive) fails the calls on it within about two, at no cost in RPCs.
# Pings are answered by gRPC's own threads, not by the agent's event loop,
# so a busy agent still answers.
COMMAND_CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 1_000),
    ("grpc.keepalive_timeout_ms", 1_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    *RECONNECT_OPTIONS,
]


def new_server() -> grpc.aio.Server:
    return grpc.aio.server(interceptors=[MetricsInterceptor()], options=SERVER_OPTIONS)


# grpc.reflection.v1 is v1alpha under another package name, message for
# message (the same fields and numbers): grpcio-reflection serves only
# v1alpha, and tools (grpcurl) ask for v1 first.
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


def add_health_and_reflection(server: grpc.aio.Server, services: Sequence[str]) -> HealthServicer:
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [*services, health.SERVICE_NAME, reflection.SERVICE_NAME]
    reflection.enable_server_reflection(names, server)
    v1 = ReflectionServicer(names)
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                REFLECTION_V1,
                {
                    "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                        v1.ServerReflectionInfo,
                        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
                    )
                },
            ),
        )
    )
    return health_servicer


async def set_serving(health_servicer: HealthServicer, services: Sequence[str]) -> None:
    for name in ("", *services):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)


def bind(server: grpc.aio.Server, address: str) -> str:
    """Binds address (port 0: any free port); returns the bound address."""
    host, _ = addresses.parse(address)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    return addresses.join(host, port)


def start_metrics(address: str | None, daemon: str) -> str:
    """Serves daemon's /metrics (its own families, metrics.registry), every
    known label set at 0 from the start; returns the bound address ('' when
    disabled)."""
    metrics.initialise(daemon)
    if not address:
        return ""
    host, port = addresses.parse(address)
    httpd, _ = start_http_server(port, addr=host, registry=metrics.registry(daemon))
    return addresses.join(host, httpd.server_port)


def write_ready_file(path: str | None, info: dict[str, str]) -> None:
    """Tells a supervisor (or a test) where we listen, atomically."""
    if not path:
        return
    tmp = Path(path + ".tmp")
    tmp.write_text(json.dumps(info))
    os.replace(tmp, path)


def stop_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


# After SIGTERM a server keeps accepting calls this long with health
# NOT_SERVING, so that probes and load balancers see it going away (a
# stopped server refuses the probe instead, which says nothing).
SHUTDOWN_ANNOUNCE = 1.0


async def shutdown(
    server: grpc.aio.Server,
    health_servicer: HealthServicer,
    grace: float,
    *,
    announce: float = SHUTDOWN_ANNOUNCE,
    before_stop: Callable[[], None] = lambda: None,
) -> None:
    """Graceful shutdown: NOT_SERVING (health Watch streams are told at
    once), still serving for `announce` seconds, then before_stop() (ends
    long-lived streams) and the server's stop with `grace` for the calls in
    flight."""
    await health_servicer.enter_graceful_shutdown()
    await asyncio.sleep(announce)
    before_stop()
    await server.stop(grace)
