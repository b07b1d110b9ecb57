# The two commands: `make run` and `make test`. Both create .venv when missing and install
# the package with its test dependencies; nothing else needs to be installed by hand.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DATA_DIR ?= var

.PHONY: install peers run lint test bench soak clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The server needs only Python; the tests and benchmarks drive real peers (Postfix's
# smtp-source, Dovecot, swaks, mbsync, Chromium...), installed from Debian when missing.
peers: $(STAMP)
	@bash scripts/system-packages.sh

run: install
	$(BIN)/caducee db upgrade --data-dir $(DATA_DIR)
	$(BIN)/caducee serve --demo --data-dir $(DATA_DIR)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: peers lint
	$(BIN)/python -m pytest

bench: peers
	$(BIN)/python bench/annuaire_import.py
	$(BIN)/python bench/smtp_accept.py
	$(BIN)/python bench/smime.py
	$(BIN)/python bench/imap.py
	$(BIN)/python bench/webmail.py
	$(BIN)/python bench/dossier.py
	$(BIN)/python bench/agenda.py

# PostgreSQL failover under SMTP load: Patroni + etcd on loopback ports in a temporary directory,
# the primary killed mid-load (bounded: about three minutes); figures in docs/reliability.md.
soak: peers
	flock /tmp/caducee-bench.lock $(BIN)/python soak/failover.py

clean:
	rm -rf $(VENV) .pytest_cache
