"""The paper's whole study at ImageNet's shape, every stage as a user runs it with the CLI, each timed.

Synthetic JPEGs shaped like ImageNet's (bench/_imagenet.py: the 1000 ImageNet wnids as class
folders, about 500 x 375, quality 90), ResNet-50 with random weights (`--weights random`: nothing
downloads), layer4.2.conv3. Stages, each one `polysem ...` process (start-up included, as a user
sees it): ingest train, ingest val, wordnet (Debian's WordNet when /usr/share/wordnet has it),
screen, screen --concepts, disentangle --from-screen (the top `--disentangle` channels), verify,
visualize (`--steps`/`--size`: small on a CPU), evaluate --plots, report.

Ingest throughput in steady state, apart from start-up: a calibration ingest of a tenth of the train
classes into a scratch store; steady seconds per image = (t_train - t_small) / (n_train - n_small),
start-up = t_train - n_train x that.

Extrapolation to ImageNet (1,281,167 train + 50,000 val = 1,331,167 images), stated in the output:
ingest = start-up + images x steady seconds per image; screen and screen --concepts scale with the
images (one scan of every attribution; an upper bound, their start-up scaled too); disentangle,
verify, evaluate and report read the concept classes' images, so they scale with images per class;
wordnet and visualize do not depend on the images (constant).

Usage:
    python bench/paper_study.py [--classes 1000] [--per-class 1] [--val-per-class 1] [--device auto]
                                [--batch-size 64] [--steps 16] [--size 64] [--json FILE]
`--tiny` (3 classes, ResNet-18, stages run in this process) only checks that the script runs;
tests/test_bench.py runs it so.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _imagenet import write_split  # noqa: E402

IMAGENET_TRAIN, IMAGENET_VAL = 1_281_167, 50_000
DEBIAN_WORDNET = Path("/usr/share/wordnet")


def polysem(args: list[str], in_process: bool) -> tuple[float, str]:
    """Run `polysem ARGS`; (seconds, stdout). A failure raises with its stderr."""
    start = time.perf_counter()
    if in_process:
        from polysem.cli import main

        out, err = io.StringIO(), io.StringIO()
        argv, sys.argv = sys.argv, ["polysem", *args]
        code = 0
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                main()
        except SystemExit as stop:
            code = stop.code or 0
        finally:
            sys.argv = argv
        if code:
            raise RuntimeError(f"polysem {' '.join(args)} exited {code}: {err.getvalue()[-2000:]}")
        return time.perf_counter() - start, out.getvalue()
    result = subprocess.run([sys.executable, "-m", "polysem.cli", *args], capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"polysem {' '.join(args)} exited {result.returncode}: {result.stderr[-2000:]}")
    return time.perf_counter() - start, result.stdout


def main() -> None:  # noqa: C901 -- one linear script of stages
    parser = argparse.ArgumentParser()
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--per-class", type=int, default=1, help="train images per class")
    parser.add_argument("--val-per-class", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--layer", default="layer4.2.conv3")
    parser.add_argument("--disentangle", type=int, default=2, help="channels of the screening to disentangle")
    parser.add_argument("--steps", type=int, default=16, help="visualize --steps (512 is the default of polysem)")
    parser.add_argument("--size", type=int, default=64, help="visualize --size (224 is the default of polysem)")
    parser.add_argument("--verify-limit", type=int, default=None, help="verify --limit")
    parser.add_argument("--in-process", action="store_true", help="run the CLI in this process (no start-up)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    parser.add_argument("--work", type=Path, default=None, help="keep the data and store here (default: a temp dir)")
    parser.add_argument("--tiny", action="store_true", help="3 classes, ResNet-18, in this process: a smoke test")
    args = parser.parse_args()
    if args.tiny:
        args.classes, args.per_class, args.val_per_class, args.batch_size = 3, 2, 1, 4
        args.model, args.layer, args.steps, args.size, args.in_process = "resnet18", "layer4.1.conv2", 2, 32, True
    work = args.work or Path(tempfile.mkdtemp(prefix="polysem-study-"))
    work.mkdir(parents=True, exist_ok=True)
    data, store, scratch = work / "data", work / "store", work / "calibration"
    for old in (store, scratch, work / "plots", work / "report"):
        shutil.rmtree(old, ignore_errors=True)
    try:
        start = time.perf_counter()
        jpeg_bytes = 0
        if not (data / "train").exists():
            jpeg_bytes += write_split(data, "train", args.classes, args.per_class)
            jpeg_bytes += write_split(data, "val", args.classes, args.val_per_class)
        made_s = time.perf_counter() - start
        n_train, n_val = args.classes * args.per_class, args.classes * args.val_per_class
        common = ["--store", str(store)]
        model = ["--model", args.model, "--weights", "random", "--layer", args.layer,
                 "--batch-size", str(args.batch_size), "--device", args.device]
        run = lambda *a: polysem(list(a), args.in_process)  # noqa: E731
        stages: dict[str, float] = {}
        small_classes = max(1, args.classes // 10)
        stages["ingest train, calibration (a tenth of the classes)"], _ = run(
            "ingest", str(data), "--split", "train", "--store", str(scratch), *model,
            "--classes", ",".join(map(str, range(small_classes))))
        stages["ingest train"], _ = run("ingest", str(data), "--split", "train", *common, *model)
        stages["ingest val"], _ = run("ingest", str(data), "--split", "val", *common, "--batch-size",
                                      str(args.batch_size), "--device", args.device)
        wordnet = ["--wordnet-dir", str(DEBIAN_WORDNET)] if (DEBIAN_WORDNET / "data.noun").exists() else []
        stages["wordnet"], _ = run("wordnet", *common, *wordnet)
        stages["screen"], screened = run("screen", *common, "--format", "json", "--limit", "20")
        stages["screen --concepts"], concepts = run("screen", "--concepts", *common, "--format", "json")
        pairs = len(json.loads(screened)) if screened.strip() else 0
        channels = len(json.loads(concepts)) if concepts.strip() else 0
        # no candidate (possible at a tiny size): channel 0 split between classes 0 and 1, forced, so that
        # the later stages still run; the output says which
        which = (["--from-screen", "--limit", str(min(args.disentangle, channels))] if channels else
                 ["--channel", "0", "--concept1", "0", "--concept2", "1", "--force"])
        run_id = None
        if channels or args.classes >= 2:
            stages["disentangle --from-screen"], made = run(
                "disentangle", *which, *common, "--device", args.device, "--batch-size", str(args.batch_size),
                "--format", "json")
            run_id = str(json.loads(made)["run_id"])
            verify = ["--limit", str(args.verify_limit)] if args.verify_limit else []
            stages["verify"], _ = run("verify", run_id, *common, *verify, "--device", args.device,
                                      "--batch-size", str(args.batch_size))
            stages["visualize"], _ = run("visualize", run_id, *common, "--steps", str(args.steps), "--size",
                                         str(args.size), "--device", args.device)
            stages["evaluate --plots"], _ = run("evaluate", run_id, *common, "--plots", str(work / "plots"),
                                                "--device", args.device)
        stages["report"], _ = run("report", *common, "--out", str(work / "report"), "--device", args.device)

        steady = (stages["ingest train"] - stages["ingest train, calibration (a tenth of the classes)"]) / max(
            1, n_train - small_classes * args.per_class)
        if steady <= 0:  # too few images to tell start-up from steady state (--tiny): no extrapolation
            steady = float("nan")
        startup = stages["ingest train"] - n_train * steady
        per_class_factor = (IMAGENET_TRAIN / 1000) / args.per_class
        image_factor = (IMAGENET_TRAIN + IMAGENET_VAL) / (n_train + n_val)
        rules = {
            "ingest train": ("start-up + 1,281,167 x steady s/image", startup + IMAGENET_TRAIN * steady),
            "ingest val": ("start-up + 50,000 x steady s/image", startup + IMAGENET_VAL * steady),
            "wordnet": ("constant", stages["wordnet"]),
            "screen": (f"x {image_factor:,.0f} (images)", stages["screen"] * image_factor),
            "screen --concepts": (f"x {image_factor:,.0f} (images)", stages["screen --concepts"] * image_factor),
            "disentangle --from-screen": (f"x {per_class_factor:,.0f} (images per class)",
                                          stages.get("disentangle --from-screen", 0) * per_class_factor),
            "verify": (f"x {per_class_factor:,.0f} (images per class)", stages.get("verify", 0) * per_class_factor),
            "visualize": ("constant", stages.get("visualize", 0)),
            "evaluate --plots": (f"x {per_class_factor:,.0f} (images per class)",
                                 stages.get("evaluate --plots", 0) * per_class_factor),
            "report": (f"x {per_class_factor:,.0f} (images per class)", stages["report"] * per_class_factor),
        }
        import torch

        device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        result = {
            "machine": (torch.cuda.get_device_name() if device == "cuda" else "cpu")
                       + f", {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the end",
            "model": f"{args.model} {args.layer} (random weights)", "batch_size": args.batch_size,
            "classes": args.classes, "train_images": n_train, "val_images": n_val,
            "jpeg_kb_per_image": round(jpeg_bytes / 1000 / (n_train + n_val), 1) if jpeg_bytes else None,
            "data_written_s": round(made_s, 1), "in_process": args.in_process,
            "screened_pairs_shown": pairs, "polysemantic_channels": channels, "run_id": run_id,
            "visualize": f"--steps {args.steps} --size {args.size}",
            "stages_s": {k: round(v, 2) for k, v in stages.items()},
            "study_s": round(sum(v for k, v in stages.items() if "calibration" not in k), 2),
            "ingest_steady_img_s": round(1 / steady, 2) if steady > 0 else None,
            "disentangled": "from the screening" if channels else "channel 0, classes 0 / 1, forced (no candidate)",
            "ingest_startup_s": round(startup, 2),
            "ingest_train_img_s_whole": round(n_train / stages["ingest train"], 2),
            "imagenet_extrapolation": {k: {"rule": r, "s": round(s, 1)} for k, (r, s) in rules.items()},
            "imagenet_study_h": round(sum(s for _, s in rules.values()) / 3600, 2),
        }
        print_table(result)
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


def print_table(result: dict) -> None:
    print(f"# paper study: {result['model']}, {result['classes']} classes, {result['train_images']} train + "
          f"{result['val_images']} val images, batch {result['batch_size']}; {result['machine']}")
    print("| stage | seconds | ImageNet (1,331,167 images): rule | ImageNet seconds |")
    print("| --- | ---: | --- | ---: |")
    extrapolated = result["imagenet_extrapolation"]
    for stage, seconds in result["stages_s"].items():
        rule = extrapolated.get(stage, {"rule": "not part of the study", "s": ""})
        print(f"| {stage} | {seconds:.2f} | {rule['rule']} | {rule['s']} |")
    print(f"| whole study | {result['study_s']:.2f} | sum | {result['imagenet_study_h'] * 3600:.0f} "
          f"({result['imagenet_study_h']} h) |")
    print(f"ingest steady state: {result['ingest_steady_img_s']} images/s; start-up {result['ingest_startup_s']} s; "
          f"whole train ingest {result['ingest_train_img_s_whole']} images/s")
    print(json.dumps({k: result[k] for k in ("polysemantic_channels", "disentangled", "run_id", "jpeg_kb_per_image",
                                               "visualize")}))


if __name__ == "__main__":
    main()
