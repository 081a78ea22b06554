"""carom: a layer-4 load balancer for Linux (XDP data plane, Python control plane)."""

__version__ = "0.1.0"
