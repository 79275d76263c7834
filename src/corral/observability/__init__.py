"""Observability: Prometheus metric families and structured logs. Fed by the control plane's
services; knows nothing of the store, the bus or the runtimes."""
