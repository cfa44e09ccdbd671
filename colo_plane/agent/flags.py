"""`colo agent`'s flags, apart from the daemon so that building the `colo`
command line imports nothing heavy (a restarted daemon serves sooner)."""

from __future__ import annotations

import argparse

POLL_US = 0  # see --poll-us


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host-id", required=True, help="this host's name in the cluster")
    parser.add_argument("--listen", default="127.0.0.1:7100", help="gRPC address (Agent API)")
    parser.add_argument("--data-listen", default="127.0.0.1:7101", help="data port for primaries' streams")
    parser.add_argument("--coordinator", default="127.0.0.1:7000", help="the coordinator's gRPC address")
    parser.add_argument(
        "--metrics-listen", default="", help="host:port for Prometheus /metrics (off if empty)"
    )
    parser.add_argument(
        "--service-host", default="127.0.0.1", help="address the COLO proxy serves clients on"
    )
    parser.add_argument(
        "--advertise-host",
        default="",
        help="host the coordinator, peers and clients dial for this agent's ports "
        "(needed when a listen address is a wildcard such as 0.0.0.0)",
    )
    parser.add_argument(
        "--advertise-grpc",
        default="",
        metavar="HOST:PORT",
        help="the Agent API address the coordinator dials, when it is not the listen address "
        "(a NAT or a proxy in between)",
    )
    parser.add_argument(
        "--poll-us",
        type=int,
        default=POLL_US,
        metavar="MICROSECONDS",
        help="the COLO proxy's threads poll this long after a request before they sleep: a request "
        f"then costs no wake-up, for a little CPU (0: never poll; default {POLL_US})",
    )
    parser.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="failure-domain label for placement (repeatable)",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="verify mode for every pair: hash both sides after each checkpoint (debug)",
    )
    parser.add_argument("--ready-file", help="write the bound addresses here as JSON once serving")
    parser.add_argument("--test-send-only-a", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--test-cut-checkpoint-after", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--test-destroy-on-signal", action="store_true", help=argparse.SUPPRESS)
