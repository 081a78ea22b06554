"""Health checks: probes of each kind, damping (pure) and the scheduler.

The daemon's whole API is `carom.health.plan.probe_keys(config)`, which maps each
checked (service key, real address) to its ProbeKey, and `HealthScheduler`
(update / usable / status / close). See docs/health.md."""
