"""host:port strings, as the flags and the API carry them."""

from __future__ import annotations


def parse(address: str) -> tuple[str, int]:
    """'127.0.0.1:7000' or '[::1]:7000' -> (host, port); ValueError if not."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"address {address!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
