"""The coordinator's tunables, with defaults that fail over well under a
second on a LAN."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    heartbeat_interval: float = 0.1  # agents heartbeat this often
    heartbeat_timeout: float = 0.5  # an agent silent this long is lost: its roles fail over
    startup_grace: float = 5.0  # after a restart, agents get this long to come back before they are lost
    checkpoint_interval: float = 5.0  # default max time between checkpoints (as Xen COLO)
    checkpoint_timeout: float = 10.0  # default issue -> SECONDARY_RESUMED deadline
    arm_checkpoints: bool = True  # hand the primary its next epoch ahead (docs/protocol.md)
    first_boot_timeout: float = 120.0  # a whole-memory copy
    rpc_timeout: float = 5.0  # every other Agent call
    unhealthy_after: int = 3  # consecutive failed checkpoints before the secondary is dropped
    reprotect_backoff: float = 1.0  # wait between re-protection attempts of one pair
    flush_interval: float = 0.2  # checkpoint progress is written this often (role changes at once)
    failure_domain_keys: tuple[str, ...] = ("zone", "rack")  # labels placement keeps apart
