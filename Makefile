# Two commands: `make demo` and `make test`. Both build .venv on first use (nothing by hand).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
LOCK   := requirements-lock.txt
# where `make lock` builds its throw-away venv (under build/, which git ignores)
LOCK_VENV ?= build/lock-venv

.PHONY: demo test bench lock clean

# Installs the lock (exact versions, pip and setuptools included), so every machine runs what was
# tested; requirements-dev.txt is the hand-edited list the lock is made from (`make lock`).
# torch is pinned to 2.13.0: the CPU build that lies on these machines' disk.
$(STAMP): $(LOCK) setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$$(grep -E '^pip==' $(LOCK))"
	$(PY) -m pip install -q -r $(LOCK)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m mtm_runtime.cli demo

# Static checks first (ruff.toml; setup.cfg [mypy]), then the suite. pytest exit 5 means
# "no tests collected": a broken suite, never a pass.
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) -m pytest -q -ra; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

bench: $(STAMP)
	$(PY) benchmarks/model_forward.py

# Refresh the lock after editing requirements-dev.txt or setup.py's extras (or to take newer
# releases): install requirements-dev.txt afresh into a throw-away venv and freeze what that
# pulled in (tools/freeze_lock.py). Review the diff, then `make test` installs it into .venv.
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install -q --upgrade pip setuptools
	$(LOCK_VENV)/bin/python -m pip install -q -r requirements-dev.txt
	$(LOCK_VENV)/bin/python tools/freeze_lock.py requirements-dev.txt > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	rm -rf $(LOCK_VENV)

clean:
	rm -rf $(VENV) build *.egg-info
