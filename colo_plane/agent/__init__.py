"""Host agent: serves the Agent API and runs a host's replication roles."""
