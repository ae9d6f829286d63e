#!/usr/bin/env bash
# The CUDA path on a lent GPU machine, in one go: its image has torch, torchvision, pyarrow, typer and
# rich but no duckdb or nltk, which travel as wheels in .devwheels/ (pip download ... here).
# Writes the numbers and logs into $OUT (or bench/out/). Usage: bash bench/device_check.sh
set -uo pipefail
out=${OUT:-bench/out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 POLYSEM_OFFLINE=1
python3 -m pip install -q --no-deps --no-build-isolation --disable-pip-version-check .devwheels/*.whl -e . >"$out/install.log" 2>&1 \
  || { echo "install failed"; tail -20 "$out/install.log"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, torchvision, duckdb; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'duckdb', duckdb.__version__, torch.cuda.get_device_name())"
# 1. correctness on CUDA: the tests whose device is auto run their models on the GPU here
timeout 240 python3 -m pytest -q -x -p no:cacheprovider tests/test_logits.py tests/test_attribution.py \
  tests/test_edge_cases.py tests/test_disentangle.py tests/test_visualize.py -k "not report and not chromium" \
  2>&1 | tee "$out/pytest-cuda.log" | tail -5
# 2. ingest throughput, ResNet-50 at 224 px, against the bare loops on the same batches
timeout 200 python3 bench/ingest_throughput.py --device cuda --images 4096 --batch-size 256 2>&1 | tee "$out/ingest.json" | tail -25
timeout 100 python3 bench/ingest_throughput.py --device cuda --images 4096 --batch-size 256 --workers 15 --ingest-only 2>&1 | tee "$out/ingest-15-workers.json" | tail -5
# 3. feature visualisation: steps/s for 4 units in one batch
timeout 90 python3 bench/visualize_speed.py --device cuda --steps 64 2>&1 | tee "$out/visualize.json" | tail -25
