"""Health checks: probes of each kind, damping (pure) and the scheduler.

The daemon's API (daemon/health_task.py) is `carom.health.plan.probe_keys(config)`,
which maps each checked (service key, real address) to its ProbeKey, and
`HealthScheduler` (update / usable / status / close): one timer heap for every
key, TCP and plain HTTP probes on the socket engine (engine.py), the other kinds
through run_check. See docs/health.md."""
