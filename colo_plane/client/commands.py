"""The `colo` client commands against the coordinator (protect, unprotect,
pairs, pair, agents, checkpoint, failover, drain, watch); the daemons are
registered in colo_plane/daemons.py.  Exit codes: 0 ok, 1 the coordinator said no
(its message on stderr), 2 usage, 3 coordinator unreachable."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import grpc

from colo_plane._proto import colo_pb2, colo_pb2_grpc
from colo_plane.client import render
from colo_plane.rpc import duration

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
DEFAULT_COORDINATOR = "127.0.0.1:7000"
CONNECT_TIMEOUT = 3.0

Command = Callable[[colo_pb2_grpc.CoordinatorStub, argparse.Namespace], int]


def _out(args: argparse.Namespace, message: Any, text: str) -> int:
    print(render.as_json(message) if args.json else text)
    return EXIT_OK


def _run(command: Command) -> Callable[[argparse.Namespace], int]:
    """Connects, runs the command, and maps failures to exit codes."""

    def run(args: argparse.Namespace) -> int:
        from colo_plane.serving import RECONNECT_OPTIONS  # a coordinator that is back is found in a second

        with grpc.insecure_channel(args.coordinator, options=RECONNECT_OPTIONS) as channel:
            try:
                grpc.channel_ready_future(channel).result(timeout=CONNECT_TIMEOUT)
            except grpc.FutureTimeoutError:
                print(
                    f"colo: cannot reach the coordinator at {args.coordinator} "
                    f"(waited {CONNECT_TIMEOUT:.0f} s): "
                    "is `colo coordinator` running there? (--coordinator or $COLO_COORDINATOR)",
                    file=sys.stderr,
                )
                return EXIT_UNREACHABLE
            try:
                return command(colo_pb2_grpc.CoordinatorStub(channel), args)
            except grpc.RpcError as exc:
                code: grpc.StatusCode = exc.code()
                details: str = exc.details() or ""
                if code == grpc.StatusCode.UNAVAILABLE and not details.strip():
                    print(f"colo: lost the coordinator at {args.coordinator}", file=sys.stderr)
                    return EXIT_UNREACHABLE
                print(f"colo: {code.name}: {details}", file=sys.stderr)
                return EXIT_REFUSED
            except KeyboardInterrupt:
                return 130

    return run


# -- commands -------------------------------------------------------------------------


SLOTS_PER_PAGE = 16  # the guest's key-value store: 256-byte slots (native/service.c)


def store_pages(slots: int) -> int:
    """Guest pages a store of `slots` keys takes: a header page and the slot pages."""
    return 1 + -(-slots // SLOTS_PER_PAGE)


def _protect(stub: colo_pb2_grpc.CoordinatorStub, args: argparse.Namespace) -> int:
    service_pages = 0  # the agent's default: min(4096, pages / 4) pages, up to ~65k keys
    if args.store_slots:
        service_pages = store_pages(args.store_slots)
        if service_pages >= args.pages:
            print(
                f"colo: a store of {args.store_slots} keys takes {service_pages} pages of the guest's "
                f"{args.pages}: give the guest more memory (--pages above {service_pages}) or the store "
                "fewer keys",
                file=sys.stderr,
            )
            return EXIT_USAGE
    spec = colo_pb2.DomainSpec(
        domain=args.domain,
        verify=args.verify,
        sim=colo_pb2.SimDomainSpec(
            pages=args.pages,
            dirty_rate=args.dirty_rate,
            seed=args.seed,
            divergence_probability=args.divergence,
            pattern=colo_pb2.SIM_PATTERN_HOT_SET if args.hot_pages else colo_pb2.SIM_PATTERN_UNIFORM,
            hot_pages=args.hot_pages,
            hot_percent=args.hot_percent,
            service_pages=service_pages,
        ),
    )
    if args.interval:
        spec.checkpoint_interval.CopyFrom(duration(args.interval))
    if args.checkpoint_timeout:
        spec.checkpoint_timeout.CopyFrom(duration(args.checkpoint_timeout))
    resp = stub.ProtectDomain(
        colo_pb2.ProtectDomainRequest(
            spec=spec, primary_host=args.primary, secondary_host=args.secondary or "", wait=args.wait
        ),
        timeout=args.timeout if not args.wait else max(args.timeout, _first_boot_budget(spec) + 10.0),
    )
    p = resp.pair
    return _out(
        args,
        resp.pair,
        f"{p.domain}: {render.state(p.state)} at generation {p.generation}, primary "
        f"{p.primary_host}, secondary {p.secondary_host or '-'}",
    )


def _first_boot_budget(spec: colo_pb2.DomainSpec) -> float:
    """How long the coordinator may follow a first boot of spec (its defaults)."""
    from colo_plane.coordinator.deadlines import first_boot_budget
    from colo_plane.coordinator.settings import Settings

    return first_boot_budget(spec, Settings())


def _unprotect(stub: colo_pb2_grpc.CoordinatorStub, args: argparse.Namespace) -> int:
    resp = stub.UnprotectDomain(
        colo_pb2.UnprotectDomainRequest(domain=args.domain, stop_domain=args.stop_domain),
        timeout=args.timeout,
    )
    return _out(args, resp.pair, f"{resp.pair.domain}: {render.state(resp.pair.state)}")


def _pairs(stub: colo_pb2_grpc.CoordinatorStub, args: argparse.Namespace) -> int:
    states = ["PAIR_STATE_" + s.upper() for s in args.state]
    resp = stub.ListPairs(
        colo_pb2.ListPairsRequest(states=states, host_id=args.host or "", include_stopped=args.all),
        timeout=args.timeout,
    )
    return _out(args, resp, render.pairs(resp.pairs))


def _pair(stub: colo_pb2_grpc.CoordinatorStub, args: argparse.Namespace) -> int:
    resp = stub.GetPair(colo_pb2.GetPairRequest(domain=args.domain), timeout=args.timeout)
    return _out(args, resp.pair, render.pair(resp.pair))


def _agents(stub: colo_pb2_grpc.CoordinatorStub, args: argparse.Namespace) -> int:
    resp = stub.ListAgents(colo_pb2.ListAgentsRequest(alive_only=args.alive), timeout=args.timeout)
    return _out(args, resp, render.agents(resp.agents))


def _checkpoint(stub: colo_pb2_grpc.CoordinatorStub, args: argparse.Namespace) -> int:
    resp = stub.Checkpoint(
        colo_pb2.CoordinatorCheckpointRequest(domain=args.domain, wait=args.wait), timeout=args.timeout
    )
    text = f"{resp.domain}: checkpoint {resp.epoch} " + ("done" if args.wait else "scheduled")
    if resp.coalesced:
        text += " (joined one already scheduled)"
    if args.wait:
        s = resp.stats
        verify = render._enum(colo_pb2.VerifyOutcome, resp.verify.outcome, "VERIFY_OUTCOME_").lower()
        text += f": {s.pages} pages, paused {s.pause_ns / 1e6:.2f} ms, verify {verify}"
    return _out(args, resp, text)


def _failover(stub: colo_pb2_grpc.CoordinatorStub, args: argparse.Namespace) -> int:
    resp = stub.Failover(
        colo_pb2.FailoverRequest(
            domain=args.domain,
            expected_generation=args.expected_generation,
            new_secondary_host=args.new_secondary or "",
        ),
        timeout=max(args.timeout, 30.0),
    )
    p = resp.pair
    return _out(
        args,
        p,
        f"{p.domain}: {p.primary_host} is primary at generation {p.generation} "
        f"({render.state(p.state)}; re-protection follows)",
    )


def _drain(stub: colo_pb2_grpc.CoordinatorStub, args: argparse.Namespace) -> int:
    resp = stub.DrainHost(
        colo_pb2.DrainHostRequest(host_id=args.host, cancel=args.cancel, wait=args.wait),
        timeout=max(args.timeout, 130.0) if args.wait else args.timeout,
    )
    if args.cancel:
        return _out(args, resp, f"{resp.host_id}: takes roles again")
    code = _out(args, resp, render.drain(resp))
    return EXIT_REFUSED if any(m.error for m in resp.moves) else code


RECONNECT_FOR = 60.0  # seconds `colo watch` looks for a coordinator that went away
HISTORY_ALL = 1 << 30  # "every event kept" (the coordinator replays at most its buffer)


def _watch(stub: colo_pb2_grpc.CoordinatorStub, args: argparse.Namespace) -> int:
    """Follows events; a coordinator that goes away (UNAVAILABLE: it shut
    down, or the connection broke) is waited for and followed again from
    the last sequence seen, rather than ending the watch."""
    kinds = ["EVENT_KIND_" + k.upper() for k in args.kind]
    until = time.monotonic() + args.for_seconds if args.for_seconds else None
    last = args.after
    history = args.history
    while True:
        left = None if until is None else until - time.monotonic()
        if left is not None and left <= 0:
            return EXIT_OK
        stream = stub.WatchEvents(
            colo_pb2.WatchEventsRequest(
                domain=args.domain or "", history=history, after_sequence=last, kinds=kinds
            ),
            timeout=left,
        )
        try:
            for item in stream:
                last = max(last, item.event.sequence)
                if not args.checkpoint_states and _checkpointing(item.event):
                    continue
                print(render.as_json(item.event) if args.json else render.event(item.event), flush=True)
            return EXIT_OK
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED and args.for_seconds:
                return EXIT_OK
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            why = exc.details() or "UNAVAILABLE"
            print(
                f"colo: the coordinator at {args.coordinator} is going away ({why}); reconnecting",
                file=sys.stderr,
                flush=True,
            )
        if not _reconnect(stub, args, until):
            print(
                f"colo: lost the coordinator at {args.coordinator}: not back within {RECONNECT_FOR:.0f} s",
                file=sys.stderr,
            )
            return EXIT_UNREACHABLE
        if last == 0 or _latest(stub) < last:
            # Nothing seen yet, or a new coordinator process (its sequences start again): all it
            # holds came after the stream broke.
            last, history = 0, HISTORY_ALL
        else:
            history = 0  # the same one: what was missed comes from after_sequence


_CHECKPOINT_FLIP = {
    (colo_pb2.PAIR_STATE_PROTECTED, colo_pb2.PAIR_STATE_CHECKPOINTING),
    (colo_pb2.PAIR_STATE_CHECKPOINTING, colo_pb2.PAIR_STATE_PROTECTED),
}


def _checkpointing(event: colo_pb2.Event) -> bool:
    """A PROTECTED <-> CHECKPOINTING state change: two of them a checkpoint, which
    its CHECKPOINT_* events already show."""
    return (
        event.kind == colo_pb2.EVENT_KIND_STATE_CHANGED
        and (event.from_state, event.to_state) in _CHECKPOINT_FLIP
    )


def _reconnect(stub: colo_pb2_grpc.CoordinatorStub, args: argparse.Namespace, until: float | None) -> bool:
    """Waits for a coordinator to answer again (a new process on the same address)."""
    give_up = time.monotonic() + RECONNECT_FOR
    if until is not None:
        give_up = min(give_up, until)
    while time.monotonic() < give_up:
        try:
            stub.ListAgents(colo_pb2.ListAgentsRequest(alive_only=True), timeout=1.0, wait_for_ready=True)
            return True
        except grpc.RpcError:
            time.sleep(0.1)
    return until is not None and time.monotonic() >= until


def _latest(stub: colo_pb2_grpc.CoordinatorStub) -> int:
    """The coordinator's latest event sequence (0: none)."""
    try:
        for item in stub.WatchEvents(colo_pb2.WatchEventsRequest(history=1), timeout=0.5):
            return int(item.event.sequence)
    except grpc.RpcError:
        pass
    return 0


# -- argument parsing -------------------------------------------------------------------


def _state_names() -> list[str]:
    return [
        n.removeprefix("PAIR_STATE_").lower()
        for n in colo_pb2.PairState.keys()  # noqa: SIM118 (an EnumTypeWrapper)
        if not n.endswith("UNSPECIFIED")
    ]


def _kind_names() -> list[str]:
    return [
        n.removeprefix("EVENT_KIND_").lower()
        for n in colo_pb2.EventKind.keys()  # noqa: SIM118 (an EnumTypeWrapper)
        if not n.endswith("UNSPECIFIED")
    ]


def _client(sub: Any, name: str, help_text: str, command: Command) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
    p.add_argument(
        "--coordinator",
        default=os.environ.get("COLO_COORDINATOR", DEFAULT_COORDINATOR),
        help="the coordinator's gRPC address (default $COLO_COORDINATOR or %(default)s)",
    )
    p.add_argument("--json", action="store_true", help="print JSON (the proto's JSON mapping) for scripts")
    p.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS", help="deadline of the call")
    p.set_defaults(func=_run(command))
    return p


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be within 0.0..1.0")
    return value


def register(sub: Any) -> None:
    """Adds the client commands to `colo`."""
    p = _client(
        sub, "protect", "protect a domain (sim backend): place a secondary, first boot, checkpoints", _protect
    )
    p.add_argument("domain")
    p.add_argument("--primary", required=True, metavar="HOST", help="host that runs the domain")
    p.add_argument("--secondary", metavar="HOST", help="host for the secondary (default: placed)")
    p.add_argument(
        "--pages", type=int, default=1024, help="guest memory in 4 KiB pages (default %(default)s)"
    )
    p.add_argument("--dirty-rate", type=int, default=1000, help="pages the guest writes per second")
    p.add_argument("--hot-pages", type=int, default=0, help="hot-set size (pattern hot_set when > 0)")
    p.add_argument("--hot-percent", type=int, default=90, help="share of writes to the hot set")
    p.add_argument("--seed", type=int, default=0, help="the guest's random seed (0: random)")
    p.add_argument(
        "--divergence",
        type=_probability,
        default=0.0,
        metavar="P",
        help="probability a reply carries a nondeterministic field",
    )
    p.add_argument("--verify", action="store_true", help="verify mode: hash both sides after each checkpoint")
    p.add_argument(
        "--store-slots",
        type=int,
        default=0,
        metavar="N",
        help="keys the guest's key-value store holds (it answers ERROR store full beyond them; default: "
        "a quarter of the guest's memory, at most 65,520 keys)",
    )
    p.add_argument(
        "--interval",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="max time between checkpoints (default: the coordinator's, 5 s)",
    )
    p.add_argument(
        "--checkpoint-timeout",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="checkpoint deadline (default: the coordinator's)",
    )
    p.add_argument("--wait", action="store_true", help="return when PROTECTED (the first boot is done)")

    p = _client(
        sub,
        "unprotect",
        "stop protecting a domain (the guest keeps running unless --stop-domain)",
        _unprotect,
    )
    p.add_argument("domain")
    p.add_argument("--stop-domain", action="store_true", help="also stop and free the guest on the primary")

    p = _client(sub, "pairs", "list pairs", _pairs)
    p.add_argument("--state", action="append", default=[], choices=_state_names(), help="only these states")
    p.add_argument("--host", help="only pairs with a role on this host")
    p.add_argument("--all", action="store_true", help="include STOPPED pairs")

    p = _client(sub, "pair", "show one pair", _pair)
    p.add_argument("domain")

    p = _client(sub, "agents", "list agents", _agents)
    p.add_argument("--alive", action="store_true", help="only agents that are alive")

    p = _client(sub, "checkpoint", "checkpoint a pair now (trigger manual)", _checkpoint)
    p.add_argument("domain")
    p.add_argument("--wait", action="store_true", help="return when it completed, with its figures")

    p = _client(sub, "failover", "planned switchover: the secondary becomes primary, nothing lost", _failover)
    p.add_argument("domain")
    p.add_argument(
        "--expected-generation",
        type=int,
        default=0,
        metavar="N",
        help="refuse unless the pair is at this generation",
    )
    p.add_argument("--new-secondary", metavar="HOST", help="new secondary (default: the old primary's host)")

    p = _client(sub, "drain", "move every role off a host (maintenance)", _drain)
    p.add_argument("host")
    p.add_argument("--cancel", action="store_true", help="stop draining: the host takes roles again")
    p.add_argument("--wait", action="store_true", help="return when the host holds no role")

    p = _client(sub, "watch", "follow the coordinator's events", _watch)
    p.add_argument("--domain", help="only this pair's events")
    p.add_argument("--history", type=int, default=0, metavar="N", help="replay the last N events first")
    p.add_argument(
        "--after", type=int, default=0, metavar="SEQ", help="replay every event after sequence SEQ"
    )
    p.add_argument("--kind", action="append", default=[], choices=_kind_names(), help="only these kinds")
    p.add_argument(
        "--checkpoint-states",
        action="store_true",
        help="also show the PROTECTED <-> CHECKPOINTING state changes (two a checkpoint)",
    )
    p.add_argument(
        "--for",
        dest="for_seconds",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="stop after this long (default: until interrupted)",
    )
