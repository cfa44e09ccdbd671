"""The lab's boot 2: the same backend on the Debian archive's Xen 4.17 build
that lacks shadow paging (CONFIG_SHADOW_PAGING unset; tests/xen/image.sh
keeps it as xen-noshadow.elf).  There a PV guest's ENABLE_LOGDIRTY fails
with EOPNOTSUPP, and CLEAN would then return an empty bitmap as if nothing
were dirty: the backend must refuse instead of replicating nothing."""

from __future__ import annotations

import subprocess

import pytest
from xenlab_util import MODE, note

pytestmark = pytest.mark.skipif(MODE != "noshadow", reason="lab boot 2 only")

if MODE == "noshadow":
    from colo_plane.native import Domain, ErrorCode, NativeError


def test_hypervisor_lacks_shadow_paging() -> None:
    info = subprocess.run(["xl", "info"], check=True, capture_output=True, text=True).stdout
    caps = next(line for line in info.splitlines() if line.startswith("virt_caps"))
    note(caps)
    assert "shadow" not in caps


def test_logdirty_refused_without_shadow_paging() -> None:
    with Domain.xen("pv-src") as dom:
        with pytest.raises(NativeError) as info:
            dom.logdirty_enable()
        note(str(info.value))
        assert info.value.code == ErrorCode.UNSUPPORTED
        assert "cannot track dirty pages" in str(info.value)
        # And no empty "all clean" log can be read afterwards.
        with pytest.raises(NativeError) as info2:
            dom.dirty_read_clear()
        note(str(info2.value))
        assert info2.value.code == ErrorCode.INVAL
        assert "log-dirty is not enabled" in str(info2.value)
