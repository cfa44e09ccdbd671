"""The two daemons of `colo`, registered here and nowhere else: `colo agent`
(one per host) and `colo coordinator` (the control plane's authority).
Their flags live beside their code (agent/flags.py, coordinator/flags.py)."""

from __future__ import annotations

import argparse
from typing import Any


def _add_logging(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-format", default="text", choices=["text", "json"])


def _cmd_agent(args: argparse.Namespace) -> int:
    import asyncio

    from colo_plane import logs
    from colo_plane.agent import server

    logs.setup(level=args.log_level, fmt=args.log_format, name=f"agent[{args.host_id}]")
    return asyncio.run(server.run(args))


def _cmd_coordinator(args: argparse.Namespace) -> int:
    import asyncio

    from colo_plane import logs
    from colo_plane.coordinator import server

    logs.setup(level=args.log_level, fmt=args.log_format, name="coordinator")
    return asyncio.run(server.run(args))


def register(sub: Any) -> None:
    """Adds `colo agent` and `colo coordinator`."""
    from colo_plane.agent.flags import add_arguments as agent_arguments
    from colo_plane.coordinator.flags import add_arguments as coordinator_arguments

    agent = sub.add_parser("agent", help="run the host agent daemon")
    agent_arguments(agent)
    _add_logging(agent)
    agent.set_defaults(func=_cmd_agent)

    coordinator = sub.add_parser("coordinator", help="run the coordinator daemon")
    coordinator_arguments(coordinator)
    _add_logging(coordinator)
    coordinator.set_defaults(func=_cmd_coordinator)
