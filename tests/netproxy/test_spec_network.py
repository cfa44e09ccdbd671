"""spec.network: named interfaces checked in the spec and at pair setup."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from colo_plane import spec
from colo_plane._proto import colo_pb2
from colo_plane.agent import domains
from colo_plane.rpc import RpcError


def _spec(interface: str, uplink: str) -> colo_pb2.DomainSpec:
    return colo_pb2.DomainSpec(
        domain="web",
        sim=colo_pb2.SimDomainSpec(pages=1024),
        network=colo_pb2.NetworkSpec(interface=interface, uplink=uplink),
    )


@pytest.mark.parametrize("bad", ["", "a" * 16, "vif5/0", "vif 5", ".."])
def test_bad_interface_names_are_refused(bad: str) -> None:
    with pytest.raises(spec.BoundError, match=r"spec\.network\.interface"):
        spec.check_spec(_spec(bad, "br0"))


def test_good_names_pass_the_spec_check() -> None:
    spec.check_spec(_spec("vif5.0", "br0"))
    spec.check_spec(colo_pb2.DomainSpec(domain="web", sim=colo_pb2.SimDomainSpec(pages=1024)))


def test_a_missing_nic_is_a_clear_error_at_pair_setup(tmp_path: Path) -> None:
    (tmp_path / "br0").mkdir()
    with pytest.raises(RpcError) as err:
        domains.check_network(_spec("vif5.0", "br0"), sys_net=tmp_path)
    assert err.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert "no network interface 'vif5.0' on this host (spec.network.interface)" in str(err.value)
    assert err.value.reason == colo_pb2.ERROR_REASON_NO_NIC


def test_no_network_is_the_sim_service_unchanged(tmp_path: Path) -> None:
    domains.check_network(
        colo_pb2.DomainSpec(domain="web", sim=colo_pb2.SimDomainSpec(pages=8)), sys_net=tmp_path
    )
