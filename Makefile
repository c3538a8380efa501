# streamcdn: `make demo` runs the stack, `make test` runs the suite; both install first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PIP := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: install demo test lint bench clean system-deps

WEB_STAMP := web/node_modules/.installed-stamp

install: $(STAMP) $(WEB_STAMP)

# Re-runs only when pyproject.toml changes; a second `make install` is instant.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "streamcdn needs Python >= 3.11; set PYTHON=/path/to/python3.11")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -e '.[dev]'
	@touch $(STAMP)

# hls.js for the watch page, from npm, served by control itself (no CDN links).
$(WEB_STAMP): web/package.json web/package-lock.json
	@command -v npm >/dev/null || (apt-get update -qq && apt-get install -y -qq npm) || \
		(echo "the watch page needs npm: apt-get install npm"; exit 1)
	cd web && npm ci --no-audit --no-fund --loglevel=error
	@touch $(WEB_STAMP)

demo: install
	$(BIN)/streamcdn demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy media/ladder.py media/playlist.py media/mp4.py streamcdn/byteserving.py \
		streamcdn/ids.py streamcdn/tokens.py streamcdn/breaker.py streamcdn/units.py \
		appliance/limiter.py appliance/readahead.py appliance/policies \
		streamcdn/config.py steering/ranking.py steering/content_steering.py steering/registry.py \
		control/accounts.py control/catalog.py control/events.py control/edge.py \
		player/abr player/traces.py player/video.py player/qoe.py player/simulate.py \
		player/session.py player/loadtest.py streamcdn/chaos.py

# Tests start their own redis-server (on a free port), drive Debian's chromium and play
# with VLC: install them if missing.
system-deps:
	@command -v redis-server >/dev/null || \
		(apt-get update -qq && apt-get install -y -qq redis-server) || \
		(echo "the tests need redis-server: apt-get install redis-server"; exit 1)
	@test -x /usr/bin/chromium || \
		(apt-get update -qq && apt-get install -y -qq chromium) || \
		(echo "the browser tests need chromium: apt-get install chromium"; exit 1)
	@command -v cvlc >/dev/null || \
		(apt-get update -qq && apt-get install -y -qq --no-install-recommends vlc-bin vlc-plugin-base) || \
		(echo "the VLC test needs cvlc: apt-get install vlc-bin vlc-plugin-base"; exit 1)

test: lint system-deps
	$(BIN)/pytest

# Each script prints its figures; bench/README.md has them with the machine and date.
bench: install
	$(PIP) install -e '.[dev,bench]'
	$(BIN)/python bench/transcode.py
	$(BIN)/python bench/traces.py
	$(BIN)/python bench/policies.py --trace bench/out/zipf.csv
	$(BIN)/python bench/policies.py --trace bench/out/sessions.csv
	$(BIN)/python bench/coalesce.py
	$(BIN)/python bench/readahead.py
	@command -v nginx >/dev/null && command -v wrk >/dev/null || \
		(apt-get update -qq && apt-get install -y -qq nginx wrk) || \
		(echo "bench/serve.py and bench/sendfile.py need nginx and wrk: apt-get install nginx wrk"; exit 1)
	$(BIN)/python bench/sendfile.py
	$(BIN)/python bench/serve.py
	$(BIN)/python bench/steering.py
	$(BIN)/python bench/abr.py || true  # prints PASS/FAIL per trace family; see bench/README.md
	$(BIN)/python bench/overload.py || true  # prints PASS/FAIL per claim; see bench/README.md

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .hypothesis
