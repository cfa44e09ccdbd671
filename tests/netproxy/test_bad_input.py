"""Bad input on the NIC path: dropped or passed as documented, counted, bounded."""

from __future__ import annotations

import resource
import select
import socket
import struct
import time

from colo_plane.native.netproxy import NetProxy, NetProxyConfig, NetRole, open_port
from colo_plane.tools.netlab import netns
from tests.netproxy import frames
from tests.netproxy.conftest import PORT, MakePair


def _request_works(lab: netns.Lab) -> None:
    with lab.connect(PORT) as c:
        c.sendall(b"SET ok 1\n")
        assert c.recv(100) == b"OK 00000000\n"


def test_malformed_ingress_passes_without_harm(make_pair: MakePair) -> None:
    pair = make_pair()
    raw = frames.raw_socket(pair.lab, pair.lab.client, "c0")
    bad = [
        frames.eth(frames.ipv4(frames.tcp(1, PORT), proto=6, tot_len=400)),  # IP length past the frame
        frames.eth(frames.ipv4(frames.tcp(2, PORT), proto=6, bad_csum=True)),  # bad IP checksum
        frames.eth(frames.ipv4(frames.tcp(3, PORT, doff=15), proto=6)),  # TCP header past the segment
        frames.eth(frames.ipv4(b"\x01\x02", proto=6)),  # TCP shorter than its header
        frames.eth(frames.ipv4(b"x" * 64, proto=17, frag=0x2000)),  # a first fragment (MF)
        frames.eth(frames.ipv4(b"x" * 64, proto=17, frag=0x0010)),  # a later fragment
        frames.eth(b"\x45"),  # an IPv4 header of one byte
        frames.eth(b"\0" * 10, ethertype=0x86DD),  # IPv6, cut short
    ]
    for f in bad * 50:
        raw.send(f)
    time.sleep(0.3)
    p, s = pair.primary.stats(), pair.secondary.stats()
    # Ingress is forwarded as it is: each guest's own stack drops it, alike.
    assert p.ingress >= len(bad) * 50 and s.ingress == p.ingress
    assert p.link_lost == 0 and s.link_lost == 0 and p.divergences == 0
    _request_works(pair.lab)
    raw.close()


def test_fragmented_output_is_held_as_uncomparable(make_pair: MakePair) -> None:
    pair = make_pair()
    rx = netns.in_netns(pair.lab.client, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    rx.bind((netns.CLIENT_IP, 9000))
    rx.settimeout(0.5)
    tx = [
        netns.in_netns(ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        for ns in (pair.lab.primary, pair.lab.secondary)
    ]
    for t in tx:
        t.sendto(b"y" * 3000, (netns.CLIENT_IP, 9000))  # past the MTU: IPv4 fragments
    assert select.select([pair.primary.event_fd], [], [], 5.0)[0]
    try:
        early = rx.recv(4000)
    except TimeoutError:
        early = b""
    assert early == b"", "a fragment left uncompared"
    assert pair.primary.stats().uncomparable["udp"] >= 1
    pair.primary.checkpoint_done(1, pair.primary.last_seq)
    rx.settimeout(5.0)
    assert rx.recv(4000) == b"y" * 3000
    for s in (rx, *tx):
        s.close()


def test_udp_is_compared_by_payload(make_pair: MakePair) -> None:
    pair = make_pair()
    rx = netns.in_netns(pair.lab.client, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    rx.bind((netns.CLIENT_IP, 9001))
    rx.settimeout(5.0)
    tx = [
        netns.in_netns(ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        for ns in (pair.lab.primary, pair.lab.secondary)
    ]
    for t in tx:
        t.bind((netns.GUEST_IP, 5353))
        t.sendto(b"same", (netns.CLIENT_IP, 9001))
    assert rx.recv(100) == b"same"
    assert pair.primary.stats().equal["udp"] == 1
    tx[0].sendto(b"primary", (netns.CLIENT_IP, 9001))
    tx[1].sendto(b"secondary", (netns.CLIENT_IP, 9001))
    assert select.select([pair.primary.event_fd], [], [], 5.0)[0]
    assert pair.primary.stats().mismatch["udp"] == 1
    pair.primary.checkpoint_done(1, pair.primary.last_seq)
    assert rx.recv(100) == b"primary"
    for s in (rx, *tx):
        s.close()


def test_a_hundred_thousand_connections_keep_the_table_bounded(make_pair: MakePair) -> None:
    bound = 4096
    pair = make_pair(max_conns=bound)
    for ns in (pair.lab.primary, pair.lab.secondary):
        netns.ip(
            "-n", ns, "neigh", "add", "10.99.0.3", "lladdr", netns.CLIENT_MAC, "dev", "g0", "nud", "permanent"
        )
    raw = frames.raw_socket(pair.lab, pair.lab.client, "c0")
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sent = 0
    for src in ("10.99.0.1", "10.99.0.3"):
        for sport in range(10000, 60000):
            raw.send(frames.tcp_syn(sport, PORT, src=src, seq=sport * 7919))
            sent += 1
    assert sent == 100_000
    time.sleep(2.0)
    p, s = pair.primary.stats(), pair.secondary.stats()
    assert p.conns <= bound and s.conns <= bound
    assert p.evicted + p.table_full > 0 and s.evicted + s.table_full > 0
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    assert grown_mb < 256, f"memory grew {grown_mb:.0f} MB"
    raw.close()


def test_runt_on_the_link_drops_it(lab: netns.Lab) -> None:
    lab.start_server(lab.secondary, PORT)
    s = NetProxy(NetProxyConfig(NetRole.SECONDARY), open_port("sg", lab.host))
    a, b = socket.socketpair()
    try:
        s.attach(b)
        a.sendall(struct.pack(">BBHIQ", 1, 0, 0, 4, 1) + b"abcd")  # an INGRESS frame of 4 bytes
        deadline = time.monotonic() + 5
        while s.stats().link_lost == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert s.stats().link_lost == 1
        assert a.recv(10) == b""  # the secondary closed the link
    finally:
        s.close()
        a.close()


def test_a_flood_fills_the_ring_drops_are_counted_memory_bounded(make_pair: MakePair) -> None:
    pair = make_pair()
    tx = netns.in_netns(pair.lab.client, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    tx.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 24)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sent, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < 2.0:  # 60 kB datagrams: 41 fragments each, made by the kernel
        try:
            tx.sendto(b"z" * 60000, (netns.GUEST_IP, 9999))
            sent += 1
        except OSError:
            pass
    deadline = time.monotonic() + 20.0  # what the secondary took still drains into its guest
    while pair.secondary.stats().ingress < pair.primary.stats().ingress and time.monotonic() < deadline:
        time.sleep(0.1)
    p, s = pair.primary.stats(), pair.secondary.stats()
    frames_sent = sent * 41
    assert p.drop_ring > 0, (frames_sent, p)
    assert p.ingress + p.drop_ring >= frames_sent * 0.9
    assert s.ingress == p.ingress and p.link_lost == 0  # what was taken reached the secondary, in order
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    assert grown_mb < 256, f"memory grew {grown_mb:.0f} MB"
    tx.close()
    _request_works(pair.lab)
