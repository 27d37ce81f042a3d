"""Picks the backend from the ORCHESTRATOR setting. One instance per process and name."""
from __future__ import annotations

import functools
import importlib

from django.conf import settings

from orchestrators.base import Orchestrator

BACKENDS = {
    "process": "orchestrators.process.ProcessOrchestrator",
    "docker": "orchestrators.docker.DockerOrchestrator",
    "nomad": "orchestrators.nomad.NomadOrchestrator",
    "kubernetes": "orchestrators.kubernetes.KubernetesOrchestrator",
}


@functools.lru_cache(maxsize=None)
def get_orchestrator(name: str | None = None) -> Orchestrator:
    name = name or settings.ORCHESTRATOR
    if name not in BACKENDS:
        raise ValueError(f"Unknown ORCHESTRATOR {name!r}; choose one of {', '.join(sorted(BACKENDS))}.")
    module_name, _, class_name = BACKENDS[name].rpartition(".")
    backend_class = getattr(importlib.import_module(module_name), class_name)
    return backend_class.from_settings(settings)
