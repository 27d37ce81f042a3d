# The two commands of the README: `make run` (the whole system) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test install bench docker-build-check services-stop clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/python -m botmanager.runstack

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench.run_all

# Builds Dockerfile and Dockerfile.simbot with a real engine from a registry-free base image and
# smoke-tests the service image (needs root, dockerd, the Debian mirror and PyPI).
docker-build-check: $(STAMP)
	PYTHON=$(BIN)/python scripts/docker-build-check.sh

services-stop:
	$(BIN)/python -m botmanager.devstack stop

clean: services-stop
	rm -rf $(VENV) .run
