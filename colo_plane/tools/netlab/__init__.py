"""Two network namespaces standing in for a pair's guests (docs/proxy.md, "testing the NIC path")."""
