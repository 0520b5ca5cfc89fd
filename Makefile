# Everyday commands. Each target creates .venv (Python >= 3.11) on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
ARGS   ?=

.PHONY: run test cover lint openapi openapi-check chart bench clean help

help:
	@echo "make run      stream a generated fleet into an embedded PostgreSQL and serve the API (ARGS='...')"
	@echo "make test     run the test suite (DATABASE_URL if set, else an embedded PostgreSQL)"
	@echo "make cover    tests with a coverage report"
	@echo "make lint     ruff + mypy --strict"
	@echo "make openapi  regenerate docs/openapi.json from the code"
	@echo "make chart    re-embed the overlays' renderings in the Helm chart (kubectl kustomize)"
	@echo "make bench    print ingest and queue figures"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

run: $(STAMP)
	$(PY) -m pipeline run $(ARGS)

test: $(STAMP)
	$(PY) -m pytest $(ARGS)

cover: $(STAMP)
	$(PY) -m pytest --cov --cov-report=term-missing:skip-covered $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check pipeline kuberay tests bench
	$(VENV)/bin/mypy pipeline kuberay

openapi: $(STAMP)
	$(PY) -m pipeline.gateway.openapi docs/openapi.json

openapi-check: $(STAMP)
	$(PY) -m pipeline.gateway.openapi --check docs/openapi.json

# The Helm chart deploys each overlay's rendering (kuberay/chart/gpu-telemetry/files/<env>.yaml);
# re-run after any change under kuberay/base, components or overlays (a test says when it is stale).
chart:
	for env in dev staging prod; do \
	  kubectl kustomize kuberay/overlays/$$env > kuberay/chart/gpu-telemetry/files/$$env.yaml || exit 1; \
	done

bench: $(STAMP)
	$(PY) bench/ingest.py --quick
	$(PY) bench/queue.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage
