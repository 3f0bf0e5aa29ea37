# kubevents — the two commands that matter: `make demo` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha1sum requirements.lock pyproject.toml | sha1sum | cut -c1-12)
TIMED := scripts/timed

.PHONY: help venv stack stack-down stack-status lint typecheck unit integration test mutants demo lock bench clean

help:
	@echo "make demo        bring the stack up and run the whole job on a live cluster (ONCE=1: one round)"
	@echo "make test        lint, type-check and run every test against the real stack"
	@echo "make stack       start Kafka, Elasticsearch 8 and 9, MariaDB and Kubernetes (first run builds)"
	@echo "                 KAFKA_BROKERS=3: also a 3-node KRaft cluster (RF 3, min ISR 2) beside them"
	@echo "make stack-down  stop them (the 3-node cluster too, if it runs)"
	@echo "make stack-status  one line per server: ready, starting or stopped"
	@echo "make mutants     the mutation gate: broken copies of the code that the tests must catch"
	@echo "make bench       run the benchmark scripts (producer, core, sinks, e2e; see BENCHMARKS.md)"
	@echo "make lock        re-pin requirements.lock from pyproject.toml"

$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q uv==0.9.30
	@# Bytecode compiled once here: uv does not by default, and with PYTHONDONTWRITEBYTECODE set
	@# every kubevents process would compile its imports again (~2 s of CPU per start).
	$(VENV)/bin/uv pip sync -q --compile-bytecode --python $(PY) requirements.lock
	$(VENV)/bin/uv pip install -q --compile-bytecode --python $(PY) --no-deps -e .
	@rm -f $(VENV)/.installed-*; touch $@

venv: $(STAMP)

# 1: the single broker only; 3: also the 3-node KRaft cluster (stack/kafka-cluster.sh), whose
# address .stack/env then carries (KUBEVENTS_TEST_KAFKA_CLUSTER).
KAFKA_BROKERS ?= 1

stack:
	@KAFKA_BROKERS=$(KAFKA_BROKERS) $(TIMED) "make stack" bash stack/up.sh

stack-down:
	@bash stack/down.sh

stack-status:
	@bash stack/status.sh

lint: venv
	@$(TIMED) "ruff" bash -c '$(VENV)/bin/ruff check app agents tables tests bench && $(VENV)/bin/ruff format --check app agents tables tests bench'

typecheck: venv
	@$(TIMED) "mypy" $(VENV)/bin/mypy

unit: venv
	@$(TIMED) "unit tests" $(PY) -m pytest tests/unit -q

integration: venv stack
	@$(TIMED) "integration tests" bash -c 'source .stack/env && $(PY) -m pytest tests/integration -q -p no:cacheprovider'

# The README's test command: everything, against the real services. The fault suite and the
# cluster tests run on the 3-node Kafka cluster, so make test starts it (and its sub-makes see it).
test: export KAFKA_BROKERS = 3
integration: export KAFKA_BROKERS = 3
mutants: export KAFKA_BROKERS = 3
test:
	@$(TIMED) "venv" $(MAKE) --no-print-directory venv
	@$(MAKE) --no-print-directory stack
	@$(MAKE) --no-print-directory lint
	@$(MAKE) --no-print-directory typecheck
	@# Two phases: every test that leaves the shared servers alone runs on two pytest-xdist workers
	@# (each test has its own topics, groups, indices, databases and namespaces); those marked
	@# alone (they stop a server, or time a hand-over) run after, one at a time.
	@$(TIMED) "pytest, first phase (2 workers)" bash -c 'source .stack/env && $(PY) -m pytest tests -q -p no:cacheprovider -rfE --durations=15 -m "not alone" -n 2'
	@$(TIMED) "pytest, second phase (marked alone: fault suite, outages)" bash -c 'source .stack/env && $(PY) -m pytest tests -q -p no:cacheprovider -rfE --durations=10 -m alone'
	@$(MAKE) --no-print-directory mutants

# The mutation gate: deliberately broken copies of the code, each of which its paired tests must
# fail on (tests/mutation/mutants.py). Part of make test.
mutants: venv stack
	@$(TIMED) "mutation gate" bash -c 'source .stack/env && $(PY) -m tests.mutation.gate'

# The whole job on the local cluster until Ctrl-C (scripts/demo.py). ONCE=1: one round, exit 0
# only when Elasticsearch and MySQL hold exactly the API server's events; ISOLATED=1: topics,
# groups, indices, table and ports of this run only (removed after), beside anything else.
demo: venv stack
	@bash -c 'source .stack/env && $(PY) -m scripts.demo $(if $(filter 1 yes true,$(ONCE)),--once) $(if $(filter 1 yes true,$(ISOLATED)),--isolated)'

bench: venv stack
	@bash -c 'source .stack/env && $(PY) -m bench.producer && $(PY) -m bench.core && $(PY) -m bench.sinks && $(PY) -m bench.e2e'

lock:
	@test -x $(VENV)/bin/uv || (python3 -m venv $(VENV) && $(VENV)/bin/pip install -q uv==0.9.30)
	$(VENV)/bin/uv pip compile -q pyproject.toml --extra dev --python-version 3.11 --generate-hashes -o requirements.lock

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
