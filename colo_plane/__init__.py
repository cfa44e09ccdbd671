"""colo-plane: a fault-tolerance control plane for virtual machines with COLO."""

__version__ = "0.1.0"
