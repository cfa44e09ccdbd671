"""`colo coordinator`'s flags, apart from the daemon so that building the
`colo` command line imports nothing heavy (a restarted coordinator serves
sooner: held replies wait for it)."""

from __future__ import annotations

import argparse

from colo_plane.coordinator.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = Settings()
    parser.add_argument("--listen", default="127.0.0.1:7000", help="gRPC address (Coordinator API)")
    parser.add_argument("--db", default="colo-coordinator.db", help="SQLite store (created if missing)")
    parser.add_argument(
        "--metrics-listen", default="", help="host:port for Prometheus /metrics (off if empty)"
    )
    parser.add_argument("--ready-file", help="write the bound addresses here as JSON once serving")
    parser.add_argument(
        "--heartbeat-interval",
        type=float,
        default=d.heartbeat_interval,
        metavar="SECONDS",
        help=f"how often agents heartbeat (default {d.heartbeat_interval})",
    )
    parser.add_argument(
        "--heartbeat-timeout",
        type=float,
        default=d.heartbeat_timeout,
        metavar="SECONDS",
        help=f"an agent silent this long is lost and its roles fail over (default {d.heartbeat_timeout})",
    )
    parser.add_argument(
        "--startup-grace",
        type=float,
        default=d.startup_grace,
        metavar="SECONDS",
        help=f"after a restart, agents have this long to come back (default {d.startup_grace})",
    )
    parser.add_argument(
        "--checkpoint-interval",
        type=float,
        default=d.checkpoint_interval,
        metavar="SECONDS",
        help=f"default max time between checkpoints (default {d.checkpoint_interval})",
    )
    parser.add_argument(
        "--checkpoint-timeout",
        type=float,
        default=d.checkpoint_timeout,
        metavar="SECONDS",
        help=f"default checkpoint deadline (default {d.checkpoint_timeout})",
    )
    parser.add_argument(
        "--no-arm-checkpoints",
        action="store_true",
        help="issue each checkpoint when the primary asks (RequestCheckpoint) instead of arming the next "
        "epoch ahead on the primary (docs/protocol.md); slower, for comparison",
    )
    parser.add_argument(
        "--failure-domain-keys",
        default=",".join(d.failure_domain_keys),
        metavar="K1,K2",
        help="agent labels placement keeps primary and secondary apart on",
    )
