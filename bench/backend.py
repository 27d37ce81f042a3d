"""The benchmarks' in-memory orchestrator (its own module: `python -m bench.sweep` runs that file as
__main__, and the registry must find the same class the benchmark counts on)."""
from __future__ import annotations


class BenchBackend:
    """An orchestrator whose bots are whatever the benchmark says; counts the calls made to it."""

    name = "bench"
    bots: list = []
    calls = {"list": 0, "stop": 0, "remove": 0, "inspect": 0}

    @classmethod
    def from_settings(cls, settings):
        return cls()

    def list(self):
        BenchBackend.calls["list"] += 1
        return list(BenchBackend.bots)

    def stop(self, container_id, timeout):
        BenchBackend.calls["stop"] += 1

    def remove(self, container_id):
        BenchBackend.calls["remove"] += 1

    def inspect(self, container_id):
        BenchBackend.calls["inspect"] += 1
        return None

    def start(self, spec):
        raise NotImplementedError
