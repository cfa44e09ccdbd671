"""The tooling around the product, as `colo` commands: `colo loadgen`,
`colo demo` and `colo bench ...` (the local cluster they start is
localcluster.py).  None of it is needed to run the coordinator or an agent."""

from __future__ import annotations

import argparse
import json
from typing import Any


def _cmd_bench_stream(args: argparse.Namespace) -> int:
    from colo_plane.tools.bench import stream

    rounds = args.rounds or stream.ROUNDS
    results = stream.run(domain_mib=args.domain_mib, dirty_pages=args.dirty_pages, rounds=rounds)
    print(json.dumps(stream.as_json(results)) if args.json else stream.render(results))
    return 0


def _cmd_loadgen(args: argparse.Namespace) -> int:
    import asyncio
    import dataclasses

    from colo_plane.tools import loadgen

    async def go() -> loadgen.Report:
        resolve = loadgen.resolver(args.coordinator, args.domain, args.address)
        return await loadgen.run(resolve, clients=args.clients, seconds=args.seconds)

    report = asyncio.run(go())
    print(json.dumps(dataclasses.asdict(report)) if args.json else loadgen.render(report))
    clean = report.acknowledged_writes_lost == 0 and report.reads_of_values_never_written == 0
    return 0 if clean else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    from colo_plane.tools import demo

    return demo.run(args)


def _cmd_bench_checkpoint(args: argparse.Namespace) -> int:
    from colo_plane.tools.bench import checkpoint

    sizes = tuple(int(x) for x in args.sizes.split(","))
    rounds = args.rounds or checkpoint.ROUNDS
    results = checkpoint.run(sizes=sizes, checkpoints=args.checkpoints, rounds=rounds)
    print(json.dumps(checkpoint.as_json(results)) if args.json else checkpoint.render(results))
    return 0


def _cmd_bench_service(args: argparse.Namespace) -> int:
    from colo_plane.tools.bench import service

    divergences = tuple(float(x) for x in args.divergence.split(","))
    clients = tuple(int(x) for x in args.clients.split(","))
    results = service.run(
        divergences=divergences,
        clients=clients,
        seconds=args.seconds,
        rounds=args.rounds or service.ROUNDS,
        poll_us=args.poll_us,
    )
    figures = service.as_json(results, poll_us=args.poll_us)
    print(json.dumps(figures) if args.json else service.render(results))
    return 0


def _cmd_bench_failover(args: argparse.Namespace) -> int:
    from colo_plane.tools.bench import failover

    trials = failover.run(trials=args.trials)
    print(json.dumps(failover.as_json(trials)) if args.json else failover.render(trials))
    return 0


def _cmd_bench_netproxy(args: argparse.Namespace) -> int:
    from colo_plane.tools.bench import netproxy

    results = netproxy.run(rounds=args.rounds, bulk_mb=args.bulk_mb, requests=args.requests)
    print(json.dumps(netproxy.as_json(results)) if args.json else netproxy.render(results))
    return 0


def register(sub: Any) -> None:
    """Adds `colo loadgen`, `colo demo` and `colo bench ...`."""
    lg = sub.add_parser("loadgen", help="writers through the proxy, then a lost-write check")
    lg.add_argument("--coordinator", help="coordinator address (follows the pair's service endpoint)")
    lg.add_argument("--domain", help="the protected domain")
    lg.add_argument("--address", help="a fixed service address instead")
    lg.add_argument("--clients", type=int, default=8)
    lg.add_argument("--seconds", type=float, default=10.0)
    lg.add_argument("--json", action="store_true", help="one JSON object of the figures")
    lg.set_defaults(func=_cmd_loadgen)

    demo = sub.add_parser("demo", help="a local cluster protecting a domain, with a live view and a failover")
    from colo_plane.tools.demo import add_arguments as demo_arguments

    demo_arguments(demo)
    demo.set_defaults(func=_cmd_demo)

    bench = sub.add_parser("bench", help="benchmarks, each against a baseline measured in the same run")
    bench_sub = bench.add_subparsers(dest="bench", required=True, metavar="BENCH")
    bstream = bench_sub.add_parser("stream", help="stream writer+reader vs raw TCP over loopback")
    bstream.add_argument("--domain-mib", type=int, default=256, help="domain size (default 256 MiB)")
    bstream.add_argument("--dirty-pages", type=int, default=10_000, help="dirty set of the second case")
    bstream.add_argument(
        "--rounds",
        "--repeats",
        type=int,
        default=0,
        help="rounds of (raw, stream) of the full domain, alternating which goes first (default 80); "
        "the dirty case runs as many as move the same bytes",
    )
    bstream.add_argument("--json", action="store_true", help="one JSON object of the figures")
    bstream.set_defaults(func=_cmd_bench_stream)
    bckpt = bench_sub.add_parser("checkpoint", help="primary pause per checkpoint vs the raw TCP ideal")
    bckpt.add_argument("--sizes", default="1000,10000,100000", help="dirty set sizes, comma-separated")
    bckpt.add_argument(
        "--checkpoints",
        type=int,
        default=0,
        help="checkpoints per size over all rounds, each paired with a raw transfer (default: 1,005 for a "
        "p99 where a 48 GB budget allows, else what it allows: a p90)",
    )
    bckpt.add_argument("--rounds", type=int, default=0, help="rounds of (raw, checkpoint) pairs (default 15)")
    bckpt.add_argument("--json", action="store_true", help="one JSON object of the figures")
    bckpt.set_defaults(func=_cmd_bench_checkpoint)
    bsvc = bench_sub.add_parser("service", help="loadgen protected vs unprotected, same guest, same run")
    bsvc.add_argument(
        "--divergence",
        default="0,0.01,0.1",
        help="divergence rates (share of replies that differ), comma-separated",
    )
    bsvc.add_argument(
        "--clients",
        default="8,32",
        help="concurrent clients, comma-separated: COLO adds latency, so few clients show it as throughput",
    )
    bsvc.add_argument("--seconds", type=float, default=3.0, help="per measurement (default %(default)s)")
    bsvc.add_argument(
        "--rounds", type=int, default=0, help="rounds of (protected, unprotected) per case (default 5)"
    )
    bsvc.add_argument("--json", action="store_true", help="one JSON object of the figures")
    bsvc.add_argument(
        "--poll-us",
        type=int,
        default=0,
        metavar="MICROSECONDS",
        help="the agents' --poll-us (both modes alike; default 0, the agent's default)",
    )
    bsvc.set_defaults(func=_cmd_bench_service)
    bfo = bench_sub.add_parser(
        "failover", help="kill -9 of the primary under load: time to first reply, writes lost"
    )
    bfo.add_argument("--trials", type=int, default=10)
    bfo.add_argument("--json", action="store_true", help="one JSON object of the figures")
    bfo.set_defaults(func=_cmd_bench_failover)

    bnp = bench_sub.add_parser(
        "netproxy", help="the NIC proxy vs a straight veth in two namespaces, same run (root)"
    )
    bnp.add_argument("--rounds", type=int, default=5, help="rounds of (straight, proxy) (default 5)")
    bnp.add_argument("--bulk-mb", type=int, default=64, help="bulk stream per measurement (default 64 MB)")
    bnp.add_argument("--requests", type=int, default=2000, help="requests per measurement (default 2000)")
    bnp.add_argument("--json", action="store_true", help="one JSON object of the figures")
    bnp.set_defaults(func=_cmd_bench_netproxy)

    from colo_plane.tools.bench import control as bench_control

    bench_control.register(bench_sub)
