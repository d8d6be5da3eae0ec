# Tailor: the two commands that matter are `make demo` and `make test`.
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
STATE  := .tailor

.PHONY: help install tools demo test chaos lint typecheck unit schemas up down clean peer

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev,neural]"
	touch $@

install: $(BIN)/.installed  ## virtual environment with the package and every extra (dev: tests, demo, bench, evaluate; neural)

tools:  ## Debian packages the integration tests use (redis-server, kcat, prometheus)
	bash deploy/local/install-tools.sh

demo: install  ## the worker on an embedded mock Kafka and fakeredis, no servers needed
	$(BIN)/tailor demo

lint: install  ## ruff
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install  ## mypy --strict
	$(BIN)/mypy

schemas: install  ## regenerate schemas/*.json from the pydantic models
	$(BIN)/tailor schemas

unit: install  ## tests that need no servers
	$(BIN)/pytest -m "not integration"

test: install tools lint typecheck  ## everything: lint, types, unit and integration tests on real Kafka and Redis
	$(BIN)/tailor schemas --check
	$(BIN)/pytest

chaos: install tools  ## fault suite: SIGKILLs, rebalances, Redis and Kafka restarts; prints the figures
	$(BIN)/pytest tests/chaos -m chaos

peer: install  ## the peer `tailor bench` compares with (Quix Streams + River) in .tailor/peer-venv
	$(BIN)/python -c "from worker.bench.peer import default_peer_venv, ensure_peer_venv; ensure_peer_venv(default_peer_venv())"

up: install tools  ## local Kafka and Redis with Tailor's topics (tailor topics create), for manual runs
	mkdir -p $(STATE)
	bash deploy/local/kafka.sh start $(STATE)/kafka | sed 's/^BOOTSTRAP=/TAILOR_BOOTSTRAP_SERVERS=/' > $(STATE)/env
	bash deploy/local/redis.sh start $(STATE)/redis | sed 's/^REDIS_URL=/TAILOR_REDIS_URL=/' >> $(STATE)/env
	set -a; . ./$(STATE)/env; set +a; $(BIN)/tailor topics create
	@echo "started; run the worker with:  set -a; . $(STATE)/env; set +a; $(BIN)/tailor run"
	@cat $(STATE)/env

down:  ## stop what `make up` started
	-bash deploy/local/kafka.sh stop $(STATE)/kafka
	-bash deploy/local/redis.sh stop $(STATE)/redis

clean: down  ## remove the virtual environment and local state
	rm -rf $(VENV) $(STATE) .pytest_cache .mypy_cache .ruff_cache
