"""What deploy/ must agree with about each `colo` daemon."""

from __future__ import annotations

from colo_plane._proto import colo_pb2
from colo_plane.agent import server as agent_server
from colo_plane.coordinator import server as coordinator_server

DAEMONS = ["coordinator", "agent"]
# Which container port (by name) each daemon flag opens.
DAEMON_PORTS = {
    "coordinator": {"grpc": "listen", "metrics": "metrics_listen"},
    "agent": {"grpc": "listen", "data": "data_listen", "metrics": "metrics_listen"},
}
# The flags whose address a daemon advertises to others (the agent registers
# the address it binds): a wildcard there is an address nobody can dial.
ADVERTISED = {"agent": ("listen", "data_listen")}
SHUTDOWN_GRACE = {"coordinator": coordinator_server.SHUTDOWN_GRACE, "agent": agent_server.SHUTDOWN_GRACE}
HEALTH_SERVICE = {
    "coordinator": colo_pb2.DESCRIPTOR.services_by_name["Coordinator"].full_name,
    "agent": colo_pb2.DESCRIPTOR.services_by_name["Agent"].full_name,
}
