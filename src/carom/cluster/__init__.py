"""The directors' cluster: wire format, roles, heartbeats, connection sync."""
