#!/usr/bin/env bash
# The CUDA path on a GPU machine, in two parts that each fit one 10-minute device call (a session has
# 15 minutes of device time, a machine's start included: part 1 first, part 2 if time is left). Each
# installs polysem from this checkout into the machine's python (python3, or $PYTHON: `make bench`
# passes its .venv's), then:
#   part 1 (about 8 minutes): the model tests on the GPU, the tensor decoder's CUDA test, ingest
#          throughput in steady state against the bare loops (the goal: 0.9 of their rate), with 15 workers;
#   part 2 (about 9 minutes): the per-stage ingest profile, the whole paper study (bench/paper_study.py
#          at 1000 classes x 4 images), the tensor decoder's effect, visualisation speed.
# Writes the numbers and logs into $OUT (or bench/out/). Usage: bash bench/device_check.sh [1|2|all]
#
# Nothing outside the repository is required. pip resolves the dependencies of pyproject.toml as
# usual (from the network, or from what the machine has installed). A machine without network
# whose python lacks some of them (a GPU image with torch but no duckdb, say) can take wheels from
# an optional folder of your own, .devwheels/ (not in the repository; fill it with e.g.
# `pip download duckdb nltk -d .devwheels --only-binary :all: --python-version 3.12`); the script
# says which distributions are still missing.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-bench/out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 POLYSEM_OFFLINE=1
py=${PYTHON:-python3}
command -v nvidia-smi >/dev/null || { echo "no nvidia-smi: this script is for a machine with an NVIDIA GPU"; exit 1; }

wheels=()
if compgen -G ".devwheels/*.whl" >/dev/null; then
  wheels=(--find-links .devwheels)  # optional: extra wheels for an offline machine
fi
pip=("$py" -m pip install -q --disable-pip-version-check --no-build-isolation)
if ! "${pip[@]}" "${wheels[@]}" -e . >"$out/install.log" 2>&1; then
  # offline and something missing: install polysem alone, then say what is missing
  "${pip[@]}" --no-deps -e . >>"$out/install.log" 2>&1 || { echo "install failed"; tail -20 "$out/install.log"; exit 1; }
fi
"$py" - <<'EOF' || exit 1
import importlib.metadata as md, re, sys
missing = []
# the declared dependencies (no extras), and pytest for step 1
for requirement in [r for r in md.requires("polysem") or [] if "extra ==" not in r] + ["pytest"]:
    name = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0)
    try:
        md.version(name)
    except md.PackageNotFoundError:
        missing.append(name)
if missing:
    sys.exit(f"missing: {', '.join(missing)}; give this machine network, or put their wheels in .devwheels/")
EOF
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$py" -c "import torch, torchvision, duckdb; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'duckdb', duckdb.__version__, torch.cuda.get_device_name())"
part=${1:-1}
case "$part" in 1|2|all) ;; *) echo "usage: bash bench/device_check.sh [1|2|all]"; exit 2 ;; esac
if [ "$part" != 2 ]; then
  # 1a. correctness on CUDA: the tests whose device is auto run their models on the GPU here
  timeout 180 "$py" -m pytest -q -x -p no:cacheprovider tests/test_logits.py tests/test_attribution.py \
    tests/test_edge_cases.py tests/test_disentangle.py tests/test_visualize.py -k "not report and not chromium" \
    2>&1 | tee "$out/pytest-cuda.log" | tail -5
  POLYSEM_CUDA_TESTS=1 timeout 60 "$py" -m pytest -q -p no:cacheprovider tests/cuda 2>&1 | tee "$out/pytest-decode-cuda.log" | tail -3
  # 1b. ingest throughput, ResNet-50 at 224 px, steady state against the bare loops on the same batches
  timeout 180 "$py" bench/ingest_throughput.py --device cuda --images 4096 --batch-size 256 2>&1 | tee "$out/ingest.json" | tail -25
  timeout 90 "$py" bench/ingest_throughput.py --device cuda --images 4096 --batch-size 256 --workers 15 --ingest-only 2>&1 | tee "$out/ingest-15-workers.json" | tail -5
fi
if [ "$part" != 1 ]; then
  # 2a. where an ingest's time goes on the GPU: torch.profiler ranges (CPU and CUDA time) and the loading stages
  timeout 100 "$py" bench/ingest_profile.py --device cuda --images 1024 --batch-size 256 --json "$out/ingest-profile.json" \
    2>&1 | tee "$out/ingest-profile.txt" | tail -25
  # 2b. the paper's whole study at ImageNet shape (1000 wnid classes, 4 train + 1 val JPEG each, about 50 s to
  #     write), every stage a `polysem` process, visualize at its defaults; steady-state ingest and the
  #     extrapolation to ImageNet's 1,331,167 images are in the JSON
  timeout 300 "$py" bench/paper_study.py --device cuda --classes 1000 --per-class 4 --val-per-class 1 --batch-size 256 \
    --steps 512 --size 224 --json "$out/paper-study.json" 2>&1 | tee "$out/paper-study.txt" | tail -25
  # 2c. the tensor decoder's effect (nvJPEG; not measured on a CPU) on the stored attributions and the screening
  #     against the default decoder (200 ImageNet-shaped JPEGs, ResNet-50), then visualisation speed
  timeout 100 "$py" bench/decode_effect.py --device cuda --classes 100 --per-class 2 --batch-size 64 \
    --json "$out/decode-effect.json" 2>&1 | tee "$out/decode-effect.txt" | tail -40
  timeout 60 "$py" bench/visualize_speed.py --device cuda --steps 64 2>&1 | tee "$out/visualize.json" | tail -25
fi
