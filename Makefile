# The two quick-start commands (`make sweep`, `make test`) do all their own set-up:
# a virtualenv with the pinned packages, the Fashion-MNIST files, and (tests only) Chromium.
# Every step is idempotent, so running them again costs seconds.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DATA_DIR := /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup data browser sweep train test test-fast lint bench ui

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements-dev.txt
	touch $@

# The data: Debian's dataset-fashion-mnist where apt exists. Elsewhere (macOS, no root)
# the first run downloads it into ./data through torchvision, so this step only warns.
data:
	@if [ -n "$$FMNIST_DATA" ] || [ -d data/FashionMNIST/raw ] || [ -f $(DATA_DIR)/train-images-idx3-ubyte.gz ]; then \
		echo "Fashion-MNIST: found"; \
	elif command -v apt-get >/dev/null; then \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; \
	else \
		echo "Fashion-MNIST: no system copy and no apt-get; it will be downloaded into ./data on first use"; \
	fi

# Headless Chromium from Debian for the browser test of the MLflow UI.
browser:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium; }

setup: $(VENV)/.installed data

sweep: setup
	$(PY) cli.py sweep hidden_size

train: setup
	$(PY) cli.py train

test: setup browser
	$(PY) -m pytest -q

# The unit layer: no stores, processes or browser (see README, Development).
test-fast: setup
	$(PY) -m pytest -q -m unit

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) bench/speed.py

ui: setup
	$(PY) cli.py ui
