"""Figures: the WordNet-over-cosine scatter (supplement Fig. 4), and the evaluation plots."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt

from polysem.constants import GAMMA, P, TAU
from polysem.errors import PolysemError
from polysem.query.screening import arv_cosines
from polysem.query.store import Store


def wordnet_scatter(store: Store, out: str | Path, tau: float = TAU, p: float = P, gamma: float = GAMMA) -> int:
    """WordNet path similarity over ARV cosine for every (channel, class pair); returns the point count."""
    cosines = arv_cosines(store, tau, p)
    similarity = {(r["class1"], r["class2"]): r["path_similarity"]
                  for r in store.query("SELECT * FROM class_similarity").to_pylist()}
    points = [(r["cosine"], similarity[(r["class1"], r["class2"])]) for r in cosines.to_pylist()
              if similarity.get((r["class1"], r["class2"])) is not None]
    if not points:
        raise PolysemError("no WordNet similarities in the store for these pairs; run `polysem wordnet` first")
    xs, ys = zip(*points)
    figure, axes = plt.subplots(figsize=(6, 4.5))
    axes.scatter(xs, ys, s=10, alpha=0.6, color="tab:blue", label=f"{len(points)} class pairs sharing a channel")
    axes.axvline(gamma, color="tab:red", linestyle="--", label=f"gamma = {gamma}")
    axes.set_xlabel("cosine similarity of the two classes' ARVs")
    axes.set_ylabel("WordNet path similarity of the two classes")
    axes.set_title(f"Semantic vs ARV similarity (tau={tau}, p={p})")
    axes.legend(loc="upper left")
    figure.tight_layout()
    save(figure, out)
    return len(points)


def save(figure, out: str | Path) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=120)
    plt.close(figure)


def _class_names(store: Store) -> dict[int, str]:
    return {r["class_id"]: r["name"] for r in store.query("SELECT class_id, name FROM classes").to_pylist()}


def _concept_label(names: dict[int, str], classes: list[int]) -> str:
    return " + ".join(names[c] for c in classes)


def activation_density(store: Store, run: dict, activations: list[dict], tau: float, out_dir: Path) -> Path:
    """KDE of the original channel's and of c'1..c'k's activations, one panel per concept."""
    from matplotlib.mlab import GaussianKDE
    import numpy as np

    names = _class_names(store)
    k_concepts = len(run["concepts"])
    figure, axes = plt.subplots(1, k_concepts, figsize=(5.5 * k_concepts, 4), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    units = [(lambda r: r["activation"], f"original {run['channel']}", "black"),
             *((lambda r, j=j: r["activations"][j], f"c'{j + 1}", colours[j % len(colours)]) for j in range(k_concepts))]
    for k, ax in zip(range(1, k_concepts + 1), axes[0]):
        rows = [r for r in activations if r["concept"] == k and r["relative_attribution"] is not None
                and r["relative_attribution"] >= tau]
        label = _concept_label(names, run["concepts"][k - 1])
        for value, unit, colour in units:
            values = np.array([value(r) for r in rows], dtype=float)
            if len(values) > 1 and values.std() > 0:
                grid = np.linspace(values.min() - values.std(), values.max() + values.std(), 200)
                ax.plot(grid, GaussianKDE(values)(grid), color=colour, label=unit)
            elif len(values):
                ax.axvline(values[0], color=colour, label=unit)
        ax.set_title(f"concept {k}: {label} ({len(rows)} val images)")
        ax.set_xlabel("spatially summed activation")
        ax.set_ylabel("density")
        ax.legend()
    figure.suptitle(f"run {run['run_id']}: channel {run['channel']} before and after disentanglement")
    figure.tight_layout()
    out = out_dir / f"run-{run['run_id']}-density.png"
    save(figure, out)
    return out


def top_activating(store: Store, run: dict, activations: list[dict], out_dir: Path, data_dir=None,
                   device: str = "auto", top: int = 16, shown: int = 6) -> list[Path]:
    """For the original channel and c'1..c'k: the most activating of the top-16 images of the concepts,
    6 shown (balanced between the concepts that appear), the most activating patch boxed."""
    import numpy as np
    import torch
    from matplotlib.patches import Rectangle

    from polysem.ingest.dataset import ImageRecord, ImageRecords
    from polysem.ingest.models import resolve_device, resolve_transform
    from polysem.constants import EVAL_SPLIT
    from polysem.disentangling import load_model
    from polysem.features import remap_paths

    names = _class_names(store)
    model = load_model(store, run["run_id"])
    meta = store.meta()
    layer = model.get_submodule(meta["layer"])
    transform = resolve_transform(meta["transform"], meta.get("transform_import_root")).fn
    torch_device = resolve_device(device)
    model.to(torch_device)
    outputs = []
    k_concepts = len(run["concepts"])
    for j, unit in enumerate(["original", *(f"c{j}" for j in range(1, k_concepts + 1))]):
        def value(r, j=j):
            return r["activation"] if j == 0 else r["activations"][j - 1]

        ranked = sorted(activations, key=value, reverse=True)[:top]
        chosen = _balanced(ranked, shown)
        rows = remap_paths(store, chosen, EVAL_SPLIT, data_dir)
        dataset = ImageRecords([ImageRecord(r["image_id"], r["path"], r["target"]) for r in rows], transform)
        figure, axes = plt.subplots(1, max(len(rows), 1), figsize=(2.6 * max(len(rows), 1), 3.2), squeeze=False)
        for ax, row, index in zip(axes[0], rows, range(len(rows))):
            _, image, error = dataset[index]
            if error:
                raise PolysemError(f"cannot read {row['path']}: {error}")
            seen = {}
            handle = layer.expanded.register_forward_hook(lambda m, i, o: seen.update(out=o))
            try:
                with torch.no_grad():
                    model(image.unsqueeze(0).to(torch_device))
            finally:
                handle.remove()
            if unit == "original":  # the original channel is what merge computes: sum_j c'j - (k - 1) r
                fmap = layer.merge(seen["out"])[0, run["channel"]]
            else:
                fmap = seen["out"][0, layer.unit_index(run["channel"], unit)]
            h, w = np.unravel_index(int(fmap.argmax()), tuple(fmap.shape))
            picture = image.cpu().float()
            picture = (picture - picture.min()) / (picture.max() - picture.min() + 1e-8)
            ax.imshow(picture.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray" if picture.shape[0] == 1 else None)
            cell_h, cell_w = picture.shape[1] / fmap.shape[0], picture.shape[2] / fmap.shape[1]
            ax.add_patch(Rectangle(((w - 0.5) * cell_w, (h - 0.5) * cell_h), 2 * cell_w, 2 * cell_h,
                                   fill=False, edgecolor="red", linewidth=2))
            ax.set_title(f"{names[row['target']]}\n{value(row):.3g}", fontsize=9)
            ax.axis("off")
        label = f"original channel {run['channel']}" if j == 0 else f"c'{j} (concept {j})"
        figure.suptitle(f"run {run['run_id']}: most activating val images of {label}")
        figure.tight_layout(rect=(0, 0, 1, 0.9))
        out = out_dir / f"run-{run['run_id']}-top-{unit}.png"
        save(figure, out)
        outputs.append(out)
    return outputs


def _balanced(ranked: list[dict], shown: int) -> list[dict]:
    """Up to `shown` rows, shared evenly among the concepts that appear (earlier concepts take the
    remainder; a concept with too few rows leaves its share to the others), in activation order."""
    by_concept = {}
    for row in ranked:
        by_concept.setdefault(row["concept"], []).append(row)
    quota = {c: 0 for c in by_concept}
    left = min(shown, len(ranked))
    while left:
        for c in sorted(by_concept):
            if left and quota[c] < len(by_concept[c]):
                quota[c] += 1
                left -= 1
    chosen = {id(r) for c, rows in by_concept.items() for r in rows[: quota[c]]}
    return [r for r in ranked if id(r) in chosen]
