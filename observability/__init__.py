"""Health probes, metrics, structured logs: the service seen from outside. Reads the apps; no app
imports it."""
