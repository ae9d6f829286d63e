# Quick start: `make demo` and `make test`. Both set up .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
POLYSEM := $(VENV)/bin/polysem
STAMP := $(VENV)/.installed-stamp
DEMO := demo
FASHION := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
WORDNET := /usr/share/wordnet/data.noun

.PHONY: demo test bench clean system-packages

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

# Debian's Fashion-MNIST and WordNet 3.0: the offline data of the demo and the tests.
system-packages:
	@if [ ! -f $(FASHION) ] || [ ! -f $(WORDNET) ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get install -y -q dataset-fashion-mnist wordnet-base wordnet-sense-index >/dev/null \
	    || (apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist wordnet-base wordnet-sense-index >/dev/null); \
	  else \
	    echo "note: Debian packages dataset-fashion-mnist wordnet-base wordnet-sense-index are missing;" \
	         "install them (sudo apt-get install ...) or let torchvision/nltk download the data online"; \
	  fi; \
	fi

demo: $(STAMP) system-packages
	$(PY) -m examples.fashion_mnist $(DEMO)
	$(POLYSEM) ingest $(DEMO)/data --split train --store $(DEMO)/store \
	  --model examples.fashion_mnist:model --weights $(DEMO)/fashion_cnn.pt \
	  --transform examples.fashion_mnist:transform --layer narrow --batch-size 256
	$(POLYSEM) ingest $(DEMO)/data --split val --store $(DEMO)/store --batch-size 256
	$(POLYSEM) info --store $(DEMO)/store
	@echo "store: $(DEMO)/store  (try: $(POLYSEM) sql 'SELECT * FROM classes' --store $(DEMO)/store)"

test: $(STAMP) system-packages
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/ingest_throughput.py

clean:
	rm -rf $(DEMO) .pytest_cache
