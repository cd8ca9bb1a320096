"""edgeplane: a programmable traffic-management platform (gateway nodes, control plane, logs, DNS)."""

__version__ = "0.1.0"
