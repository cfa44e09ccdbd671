"""Hand-made Ethernet frames for the NIC path's bad-input tests."""

from __future__ import annotations

import socket
import struct

from colo_plane.tools.netlab import netns


def mac(text: str) -> bytes:
    return bytes(int(x, 16) for x in text.split(":"))


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f">{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ipv4(
    payload: bytes,
    *,
    proto: int,
    src: str = netns.CLIENT_IP,
    dst: str = netns.GUEST_IP,
    tot_len: int | None = None,
    frag: int = 0,
    bad_csum: bool = False,
) -> bytes:
    tl = 20 + len(payload) if tot_len is None else tot_len
    head = struct.pack(
        ">BBHHHBBH4s4s", 0x45, 0, tl, 1, frag, 64, proto, 0, socket.inet_aton(src), socket.inet_aton(dst)
    )
    c = csum(head) ^ (0x1234 if bad_csum else 0)
    return head[:10] + struct.pack(">H", c) + head[12:] + payload


def tcp(sport: int, dport: int, *, seq: int = 1, flags: int = 0x02, doff: int = 5) -> bytes:
    return struct.pack(">HHIIBBHHH", sport, dport, seq, 0, doff << 4, flags, 65535, 0, 0)


def tcp_syn(sport: int, dport: int, src: str = netns.CLIENT_IP, seq: int = 1) -> bytes:
    seg = tcp(sport, dport, seq=seq)
    pseudo = socket.inet_aton(src) + socket.inet_aton(netns.GUEST_IP) + struct.pack(">BBH", 0, 6, len(seg))
    c = csum(pseudo + seg)
    seg = seg[:16] + struct.pack(">H", c) + seg[18:]
    return eth(ipv4(seg, proto=6, src=src))


def eth(payload: bytes, ethertype: int = 0x0800) -> bytes:
    return mac(netns.GUEST_MAC) + mac(netns.CLIENT_MAC) + struct.pack(">H", ethertype) + payload


def raw_socket(lab: netns.Lab, ns: str, dev: str) -> socket.socket:
    def make() -> socket.socket:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        s.bind((dev, 0))
        return s

    return netns.in_netns(ns, make)
