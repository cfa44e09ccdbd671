"""The `colo` command: the product's daemons (daemons.py) and client
commands (client/commands.py), then the tooling around it (tools/commands.py:
loadgen, demo, benches)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence


def _cmd_version(args: argparse.Namespace) -> int:
    from colo_plane import __version__, native

    xen = "built" if native.xen_built() else "not built: xenctrl.h not found at build time"
    if args.json:
        print(
            json.dumps(
                {"version": __version__, "native": native.version(), "backends": {"sim": "built", "xen": xen}}
            )
        )
    else:
        print(f"colo-plane {__version__} (native {native.version()})")
        print("backend sim: built")
        print(f"backend xen: {xen}")
    return 0


def _parser() -> argparse.ArgumentParser:
    from colo_plane import daemons
    from colo_plane.client import commands as client_commands
    from colo_plane.tools import commands as tool_commands

    parser = argparse.ArgumentParser(prog="colo", description="COLO fault tolerance for virtual machines")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    version = sub.add_parser("version", help="print the version and the backends built")
    version.add_argument("--json", action="store_true", help="one JSON object")
    version.set_defaults(func=_cmd_version)

    daemons.register(sub)  # colo agent, colo coordinator
    client_commands.register(sub)  # colo protect, unprotect, pairs, pair, agents, checkpoint, ...
    tool_commands.register(sub)  # colo loadgen, demo, bench ...
    return parser


def _terminated(signum: int, frame: object) -> None:
    # Unwind like Ctrl-C, so a bench or the demo stops the local cluster it
    # started instead of leaving it running (the daemons install their own).
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminated)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
