# tortie: the two commands the README promises, and their parts.
#   make demo   the main job: the seed's walkthrough on a real lab
#   make test   everything CI runs: install, lint, type-check, layering, all test tiers
VENV   ?= .venv
PY     := $(VENV)/bin/python
PYTEST := $(VENV)/bin/pytest

.PHONY: deps lint test test-unit demo bench bench-smoke clean

deps:
	./scripts/install-deps

lint: deps
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# All tiers; a tier that cannot run (missing daemon, no root) fails the run.
test: lint
	TORTIE_REQUIRE_ALL=1 $(PYTEST) -q tests

test-unit: deps
	$(PYTEST) -q -m unit tests

# The seed's walkthrough on a real two-node lab: IPIP, then BGP mode switched live (root).
demo: deps
	$(PY) -m tortie.lab.demo

# The benchmark suite against the physical limit (~10 min here): bench/results.md and .png.
bench: deps
	$(PY) bench/run.py

# One short run of each benchmark (~2.5 min), into a temp dir; the e2e tier runs it too.
bench-smoke: deps
	$(PY) bench/run.py --smoke

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
