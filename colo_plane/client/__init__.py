"""The `colo` client commands: talk to the coordinator, print tables or JSON."""
