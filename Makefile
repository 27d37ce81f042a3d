# The two commands of the README: `make run` (the whole system) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test install bench docker-build-check compose-check kubernetes-check remove-bots compose-down services-stop clean
# Compose v2 (`docker compose`) when it answers, else v1 (`docker-compose`, Debian's package).
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/python -m devstack.run

# Two pytest-xdist workers (PYTEST_WORKERS=0: one process): most of the suite's time is spent
# waiting on real servers, workers and bots, which overlaps well on 2 cores. Each worker has its own
# test database and Redis database (tests/conftest.py); a test file stays on one worker, so a
# module's fixtures start once and its tests run in order.
PYTEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench.run_all

# Builds Dockerfile and Dockerfile.simbot with a real engine from a registry-free base image and
# smoke-tests the service image (needs root, dockerd, the Debian mirror and PyPI).
docker-build-check: $(STAMP)
	PYTHON=$(BIN)/python scripts/docker-build-check.sh

# The whole compose deployment for real, offline (docker-compose.offline.yml's stand-ins), on the
# images docker-build-check built: health, a meeting, /readyz, JSON logs, down leaving nothing.
compose-check: $(STAMP)
	PYTHON=$(BIN)/python COMPOSE="$(COMPOSE)" scripts/compose-check.sh

# deploy/kubernetes/ offline: rendered with kustomize, every object validated against the Kubernetes
# schemas, the ServiceAccount's rights equal to the backend's API calls (scripts/check-kubernetes.sh).
kubernetes-check: $(STAMP)
	PYTHON=$(BIN)/python scripts/check-kubernetes.sh

# Stops (SIGTERM, SIGKILL after BOT_STOP_TIMEOUT_SECONDS) and removes every bot of this deployment
# (DEPLOYMENT_NAME) on the configured backend: after `make run` with the docker backend.
remove-bots: $(STAMP)
	$(BIN)/python manage.py remove_bots

# Takes a compose deployment down leaving no bot behind: the bots first (a one-off container of
# worker-orchestrator, which has the engine's socket), then the services. DOWN_ARGS=-v also
# deletes the data volumes.
compose-down:
	$(COMPOSE) run --rm --no-deps -T worker-orchestrator python manage.py remove_bots
	$(COMPOSE) down --remove-orphans $(DOWN_ARGS)

services-stop:
	$(BIN)/python -m devstack.servers stop

clean: services-stop
	rm -rf $(VENV) .run
