# The two commands of the README: `make demo` and `make test`. Both create .venv first if needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: install browser demo test test-fast test-reliability test-crashes-full bench bench-ingest lint docs clean

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c requirements.lock -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/flywheel demo

# The report's test renders the overview in real headless Chromium (Debian's package). Installed when missing and
# apt-get runs as root (CI's fresh machine); a no-op when it is there; elsewhere that one test skips, saying why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  echo "installing Debian's chromium for the report's browser test" && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "chromium is not installed and cannot be here (needs apt-get as root): its test will skip"

# Three processes, a test module each at a time: most tests wait on the broker, the lake, a server or a subprocess,
# so on this project's 2 cores a third process fills the waits (2 processes: 11 min 55 s on a quiet machine, with
# 306 tests; one process takes about twice as long as two).
test: $(STAMP) browser
	$(BIN)/pytest -n 3 --dist loadfile

test-fast: $(STAMP) browser
	$(BIN)/pytest -n 3 --dist loadfile -m "not slow and not reliability"

# What flywheel survives (crashes, broker restarts, full disks, rebalancing, a short soak) and how it runs beyond one
# machine (TLS, object storage): minutes per test, so kept out of `make test`'s 10 minutes; CI runs it after.
test-reliability: $(STAMP)
	$(BIN)/pytest -n 2 --dist loadfile -m reliability

# Issue 14's full crash figure: `flywheel ingest` SIGKILLed 20 times over a 1M-event replay (the tier runs the same
# test at 150k events). 11.5-17 minutes on this project's 2 shared cores; prints its figures as one line of JSON.
test-crashes-full: $(STAMP)
	INGEST_CRASH_EVENTS=1000000 $(BIN)/pytest -m reliability -s -p no:cacheprovider tests/streams/test_ingest_crashes.py

# Each benchmark prints its figure next to a baseline measured in the same run (the machine is shared and noisy).
bench: $(STAMP)
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/quality.py
	$(BIN)/python bench/maintenance.py
	$(BIN)/python bench/drift.py
	$(BIN)/python bench/collect.py
	$(BIN)/python bench/curate.py

bench-ingest: $(STAMP)
	$(BIN)/python bench/ingest.py

# ruff over everything; mypy over the package. mypy cannot follow setuptools' package-dir mapping (schemas/ is
# flywheel.schemas, ...), so it checks a tree of symlinks laid out as the installed package is.
TYPECHECK := build/typecheck
lint: $(STAMP)
	$(BIN)/ruff check .
	rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)/flywheel
	ln -s $(CURDIR)/flywheel/* $(TYPECHECK)/flywheel/
	for d in schemas streams warehouse flows infra; do ln -s $(CURDIR)/$$d $(TYPECHECK)/flywheel/$$d; done
	cd $(TYPECHECK) && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml -p flywheel

# docs/CLI.md and docs/CONFIGURATION.md from every command's --help and every setting (tests/commands/test_reference.py
# fails while they differ from the code).
docs: $(STAMP)
	$(BIN)/python -m flywheel.commands.reference

clean:
	rm -rf $(VENV) .flywheel .pytest_cache
