"""Health checks: probes of each kind, damping (pure) and the scheduler.

The daemon's whole API is `HealthScheduler` (update / usable / status / close)
and `carom.config.checks.probe_keys(config)`, which maps each (service, real) to
its ProbeKey. See docs/health.md."""
