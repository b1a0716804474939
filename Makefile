# The whole set-up: `make run` starts the bot, `make test` runs the tests.
# Both create .venv on first use and install what the project needs.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch is installed first and pinned. On Linux the PyPI wheel of this version carries
# CUDA; a CPU-only machine with a local wheel of it takes that. Override for another
# build, e.g. `make run TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"`.
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: run test test-slow redis lint format bench selftest doctor clean worker

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m bot

selftest: $(STAMP)
	$(PY) -m bot selftest

# A GPU machine serving the bot's jobs through Redis (SDBOT_QUEUE_URL, README).
worker: $(STAMP)
	$(PY) -m bot worker

doctor: $(STAMP)
	$(PY) -m bot doctor

# The GPU-worker tests run a real redis-server of their own (tests/redis_server.py). This
# installs it with apt-get where it can; elsewhere it says how, and those tests skip
# (under CI=true it fails instead).
redis:
	bash scripts/ensure-redis

test: $(STAMP) redis
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -m "not slow"

test-slow: $(STAMP) redis
	$(PY) -m pytest -m slow

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy bot engine cogs data

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

bench: $(STAMP)
	$(PY) bench/overhead.py
	$(PY) bench/queue_load.py
	$(PY) bench/soak.py
	$(PY) bench/scale_out.py
	$(PY) bench/image_modes.py
	$(PY) bench/train.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
