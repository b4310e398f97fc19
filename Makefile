# The README's two commands: `make run` and `make test`. Both set up what they need.
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")

.PHONY: setup run test lint-code

setup:
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv \
		|| $(PYTHON) -m pip install --quiet --user uv
	@$(UV) sync --locked --quiet

run: setup
	$(UV) run referloop lint playbooks
	$(UV) run referloop run

lint-code: setup
	$(UV) run ruff check .
	$(UV) run ruff format --check .
	$(UV) run mypy

test: lint-code
	$(UV) run pytest
