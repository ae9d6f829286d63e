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

# Debian's Fashion-MNIST and WordNet 3.0: the offline data of the demo and the tests; chromium
# loads the report page in the tests.
DEBS := dataset-fashion-mnist wordnet-base wordnet-sense-index chromium
system-packages:
	@if [ ! -f $(FASHION) ] || [ ! -f $(WORDNET) ] || ! command -v chromium >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get install -y -q $(DEBS) >/dev/null \
	    || (apt-get update -q >/dev/null && apt-get install -y -q $(DEBS) >/dev/null); \
	  else \
	    echo "note: some of the Debian packages $(DEBS) are missing;" \
	         "install them (sudo apt-get install ...) or let torchvision/nltk download the data online"; \
	  fi; \
	fi

# The whole story on the built-in example: data and model, ingest, screen, WordNet, concepts, disentangle,
# verify (on 500 train images per class: enough for Ineq. 2's fractions, a few seconds), visualise (28 px,
# the model's input size, 256 steps: well under a minute on 2 cores), evaluate, report.
demo: $(STAMP) system-packages
	$(PY) -m examples.fashion_mnist $(DEMO)
	$(POLYSEM) ingest $(DEMO)/data --split train --store $(DEMO)/store \
	  --model examples.fashion_mnist:model --weights $(DEMO)/fashion_cnn.pt \
	  --transform examples.fashion_mnist:transform --layer narrow --batch-size 256
	$(POLYSEM) ingest $(DEMO)/data --split val --store $(DEMO)/store --batch-size 256
	$(POLYSEM) info --store $(DEMO)/store
	$(POLYSEM) wordnet --store $(DEMO)/store
	$(POLYSEM) screen --store $(DEMO)/store --limit 8
	$(POLYSEM) plot wordnet --store $(DEMO)/store --out $(DEMO)/plots/wordnet.png
	$(POLYSEM) screen --concepts --store $(DEMO)/store
	@run=$$($(POLYSEM) disentangle --from-screen --limit 1 --store $(DEMO)/store --format json \
	        | $(PY) -c "import json, sys; print(json.load(sys.stdin)['run_id'])") && \
	  echo "disentangled: run $$run" && \
	  $(POLYSEM) verify $$run --limit 500 --store $(DEMO)/store && \
	  $(POLYSEM) visualize $$run --store $(DEMO)/store --size 28 --steps 256 && \
	  $(POLYSEM) evaluate $$run --store $(DEMO)/store --plots $(DEMO)/plots && \
	  $(POLYSEM) runs --store $(DEMO)/store && \
	  $(POLYSEM) report --store $(DEMO)/store --out $(DEMO)/report && \
	  echo && \
	  echo "store:  $(DEMO)/store (catalog.duckdb + Parquet); try: $(POLYSEM) sql 'SELECT * FROM polysemantic_pairs()' --store $(DEMO)/store" && \
	  echo "plots:  $(DEMO)/plots/" && \
	  echo "report: $(DEMO)/report/index.html (open it in a browser)" && \
	  echo "model:  $(DEMO)/store/artifacts/; in Python: polysem.load_model('$(DEMO)/store', '$$run')"

# The second example: a small ViT trained on the same images (about 30 s), both blocks' MLP units (a Linear
# over 17 tokens) ingested into one store in one pass, the last block's screened, the first polysemantic unit
# split, verified, evaluated, reported.
.PHONY: demo-vit
demo-vit: $(STAMP) system-packages
	$(PY) -m examples.fashion_vit $(DEMO)-vit

# one pytest worker per core: most of the suite's time is subprocesses importing torch
# ruff (pyproject's rules on the package; undefined and unused names in tests, bench and examples), mypy
# (tools/typecheck.py: the package laid out as installed) and vulture (no dead code: unused functions, methods,
# attributes and variables, all reported at confidence 60; false positives in tools/vulture_whitelist.py)
# before the tests
test: $(STAMP) system-packages
	$(PY) -m ruff check polysem ingest query sql
	$(PY) -m ruff check --select F tests bench examples
	$(PY) tools/typecheck.py
	$(PY) -m vulture polysem ingest query sql tools/vulture_whitelist.py --min-confidence 60
	$(PY) -m pytest -q -n auto

# the generated pages: docs/cli-reference.md from the command line, docs/store.md's second half from
# query/layout.py and sql/ (tests/test_docs.py fails when either is stale)
.PHONY: docs
docs: $(STAMP)
	$(PY) tools/cli_reference.py
	$(PY) tools/store_reference.py

# every script in bench/ (tests/test_bench.py checks this list and runs each at a tiny size);
# the CUDA path only where there is a GPU. Numbers: docs/benchmarks.md.
bench: $(STAMP)
	PYTHONPATH=. $(PY) bench/class_reads.py
	PYTHONPATH=. $(PY) bench/ingest_throughput.py
	PYTHONPATH=. $(PY) bench/query_latency.py
	PYTHONPATH=. $(PY) bench/screening_scale.py
	PYTHONPATH=. $(PY) bench/visualize_speed.py
	PYTHONPATH=. $(PY) bench/ingest_profile.py
	PYTHONPATH=. $(PY) bench/captum_ratio.py
	PYTHONPATH=. $(PY) bench/several_layers.py
	PYTHONPATH=. $(PY) bench/decode_effect.py
	PYTHONPATH=. $(PY) bench/paper_study.py --classes 1000 --per-class 1 --val-per-class 1
	@if command -v nvidia-smi >/dev/null; then PYTHON=$(abspath $(PY)) bash bench/device_check.sh all; \
	 else echo "no nvidia-smi: bench/device_check.sh (the CUDA path) skipped"; fi

clean:
	rm -rf $(DEMO) $(DEMO)-vit .pytest_cache
