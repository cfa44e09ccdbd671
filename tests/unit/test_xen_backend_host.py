"""The Xen backend on a host without Xen: a clear error at open, no crash.

The rest of the backend is tested against a real hypervisor by
`make xen-test` (tests/xen/)."""

from __future__ import annotations

import os

import pytest

from colo_plane import native
from colo_plane.native import BackendError, Domain, ErrorCode

on_xen = os.path.exists("/dev/xen/privcmd") or os.path.exists("/proc/xen/privcmd")


@pytest.mark.skipif(not native.xen_built(), reason="xen backend not built (no xenctrl.h)")
@pytest.mark.skipif(on_xen, reason="this host runs Xen")
@pytest.mark.parametrize("name", ["guest1", "7"])
def test_no_hypervisor(name: str) -> None:
    with pytest.raises(BackendError) as info:
        Domain.xen(name)
    assert info.value.code == ErrorCode.NO_HYPERVISOR
    assert "backend xen: no Xen hypervisor on this host" in str(info.value)


@pytest.mark.skipif(native.xen_built(), reason="xen backend is built")
def test_not_built() -> None:
    with pytest.raises(BackendError) as info:
        Domain.xen("guest1")
    assert info.value.code == ErrorCode.NOT_BUILT
    assert "backend xen: not built: xenctrl.h not found" in str(info.value)
