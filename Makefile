# tortie: the two commands the README promises, and their parts.
#   make demo   the main job (a placeholder until the lab lands)
#   make test   everything CI runs: install, lint, type-check, layering, all test tiers
VENV   ?= .venv
PY     := $(VENV)/bin/python
PYTEST := $(VENV)/bin/pytest

.PHONY: deps lint test test-unit demo clean

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

demo: deps
	@echo "tortie demo: the seed walkthrough (two nodes, pod1 -> pod2 in IPIP and BGP mode,"
	@echo "routes, captures, side-by-side figures) arrives with the lab (issue 7)."
	@echo "Until then, the foundation in action:"
	@./scripts/demo-foundation

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
