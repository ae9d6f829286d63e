"""A self-contained static report of a store: `index.html` and its images in one folder.

No server, no JavaScript, no file outside the folder: a researcher opens it in a
browser or sends the folder to a colleague. It shows what the store holds, the
screening table, the WordNet-vs-cosine figure and, per run, its numbers, the Fig. 1
panel, the densities and the feature visualisations. Runs come in the order of the
paper's table (its channels first, for its model and layer), then as `polysem runs`
lists them.
"""

from __future__ import annotations

import html
import os
import shutil
import tempfile
from pathlib import Path

from polysem.constants import EVAL_SPLIT, TAU
from polysem.errors import PolysemError
from polysem.query.store import Store

# The channels of ResNet-50 layer4.2.conv3 in the order of the paper's table (METHOD.md).
PAPER_CHANNELS = (522, 1404, 895, 242, 1660, 1349, 1832, 1773, 1698)
PAPER_LAYER = ("resnet50", "layer4.2.conv3")

_STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1300px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: left; }
th { background: #eee; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.3em 0; }
.note { color: #666; font-size: 0.9em; }
section { border-top: 2px solid #ccc; margin-top: 2em; }
"""


def _e(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return html.escape(", ".join(str(v) for v in value))
    return html.escape(str(value))


def _table(rows: list[dict], columns: list[str] | None = None) -> str:
    if not rows:
        return '<p class="note">(none)</p>'
    columns = columns or list(rows[0])
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_e(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(path: Path, out: Path, alt: str) -> str:
    return f'<img src="{html.escape(path.relative_to(out).as_posix())}" alt="{html.escape(alt)}">'


def run_order(runs: list[dict], meta: dict) -> list[dict]:
    """The paper's channels first in its order (for its model and layer), then the store's order."""
    paper = (meta.get("model"), meta.get("layer")) == PAPER_LAYER
    rank = {c: i for i, c in enumerate(PAPER_CHANNELS)} if paper else {}
    return [r for _, r in sorted(enumerate(runs), key=lambda ir: (rank.get(ir[1]["channel"], len(rank)), ir[0]))]


def write_report(store: Store | str | os.PathLike, out: str | os.PathLike = "polysem-report", *, data_dir=None,
                 device: str = "auto", tau: float = TAU) -> Path:
    """Write OUT/index.html and OUT/img/*.png; returns the path of index.html. OUT may be an existing
    folder (an earlier report is replaced); nothing in it changes unless the whole report is made."""

    store = store if isinstance(store, Store) else Store(store)
    store.require()
    target = Path(out).expanduser().absolute()
    store.check_outside(target, folder=True)
    target.mkdir(parents=True, exist_ok=True)
    # built in a staging folder beside, then moved into place: a failure leaves the last report as it was
    out = Path(tempfile.mkdtemp(prefix=".polysem-report-", dir=target))
    try:
        return _publish(_write_page(store, out, data_dir, device, tau), target)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _publish(staging: Path, target: Path) -> Path:
    """Move the staged images, then the page, into the report folder; returns the page's path."""
    (target / "img").mkdir(exist_ok=True)
    for image in (staging / "img").iterdir():
        os.replace(image, target / "img" / image.name)
    os.replace(staging / "index.html", target / "index.html")
    return target / "index.html"


def _write_page(store: Store, out: Path, data_dir, device: str, tau: float) -> Path:
    """The page and its images in `out`; returns `out`."""
    from polysem import plots
    from polysem.disentangling import run_row
    from polysem.panel import class_names, run_figures
    from polysem.query.screening import polysemantic_pairs

    images = out / "img"
    images.mkdir(parents=True, exist_ok=True)
    info = store.info()
    meta = store.meta()
    names = class_names(store)
    parts = [f"<h1>polysem report: {_e(info['store'])}</h1>",
             f'<p class="note">polysem {_e(info["polysem_version"])}; store created {_e(info["created_at"])}</p>',
             "<h2>What the store holds</h2>",
             _table([{"model": info["model"], "weights": info["weights"], "layer": info["layer"],
                      "in -> out channels": f"{info['layer_shape']['in_channels']} -> {info['layer_shape']['out_channels']}",
                      "transform": info["transform"]}]),
             _table([{"split": s, **c} for s, c in info["splits"].items()], ["split", "images", "classes", "unreadable"]),
             "<details><summary>classes</summary>"
             + _table(store.query("SELECT class_id, folder, name, wnid FROM classes ORDER BY class_id").to_pylist())
             + "</details>"]

    parts.append("<h2>Screening: polysemantic candidates</h2>")
    try:
        pairs = polysemantic_pairs(store).to_pylist()
        parts.append('<p class="note">Channels relevant for two classes (tau 0.03, p 0.75) whose ARVs have cosine '
                     'below gamma 0.5, lowest first; WordNet path similarity once `polysem wordnet` ran.</p>')
        parts.append(_table(pairs, ["channel", "class1", "name1", "class2", "name2", "cosine", "wordnet_similarity",
                                    "fraction1", "fraction2"]))
    except PolysemError as error:
        parts.append(f'<p class="note">{_e(error)}</p>')
    try:
        from polysem.wordnet import similarity_points

        plots.wordnet_scatter(similarity_points(store), images / "wordnet.png")
        parts.append(_img(images / "wordnet.png", out, "WordNet similarity over ARV cosine"))
    except PolysemError as error:
        parts.append(f'<p class="note">WordNet figure: {_e(error)}</p>')

    summary = run_order(store.query("SELECT * FROM run_summary").to_pylist(), meta)
    parts.append(f"<h2>Disentangled channels ({len(summary)} runs)</h2>")
    parts.append(_table([{**r, "concepts": " / ".join(" + ".join(names[c] for c in concept) for concept in r["concepts"]),
                          "fractions": [[round(f, 3) if f is not None else None for f in row] for row in r["fractions"]]
                          if r["fractions"] else None} for r in summary],
                        ["run_id", "channel", "concepts", "rho", "n_sources", "n_shared", "max_logit_diff",
                         "n_images", "fractions", "resolved"]))
    parts.append('<p class="note">fractions: row j is concept j; on its val images (relative attribution >= tau), '
                 "the mean fraction of the original activation carried by c'1, c'2, ... (a good split has large "
                 "numbers on the diagonal); resolved: `polysem verify` found every new channel relevant for one "
                 "concept's classes only (empty until it ran).</p>")
    for row in summary:
        run = run_row(store, row["run_id"])
        activations = store.query("SELECT * FROM run_activations(?, split_name := ?)",
                                  [run["run_id"], EVAL_SPLIT]).to_pylist()
        concepts = " / ".join(" + ".join(names[c] for c in concept) for concept in run["concepts"])
        parts.append(f"<section><h3>run {_e(run['run_id'])}: channel {run['channel']}, {_e(concepts)}</h3>")
        if not activations:
            parts.append(f'<p class="note">no {EVAL_SPLIT} images of these classes: ingest the {EVAL_SPLIT} split '
                         "for the panel and densities.</p></section>")
            continue
        figures = run_figures(store, run, activations, tau, images, data_dir, device)
        vis = store.query("SELECT unit, method, steps, size, seed, act_original, act_c1, act_c2, act_r, selectivity "
                          "FROM visualizations WHERE run_id = ? QUALIFY created_at = max(created_at) OVER () "
                          "ORDER BY list_position(['original', 'c1', 'c2', 'r'], unit)", [run["run_id"]]).to_pylist() \
            if figures["visualizations"] else []
        parts.append("<h4>Feature visualisations</h4>")
        if vis:
            parts.append(_img(figures["visualizations"][0], out, "feature visualisations"))
            for v in vis:  # the other unit's activation is not positive on this image: no finite ratio
                if v["unit"] in ("c1", "c2") and v["selectivity"] is None:
                    v["selectivity"] = "unbounded (other unit <= 0)"
            parts.append(_table(vis))
            parts.append('<p class="note">act_*: spatially summed activation of each unit on the unit\'s image; '
                         "selectivity: act(c'1)/act(c'2) on c'1's image, the reverse on c'2's.</p>")
        else:
            parts.append(f'<p class="note">none yet: polysem visualize {_e(run["run_id"])}</p>')
        parts.append("<h4>Panel (paper Fig. 1)</h4>" + _img(figures["panel"][0], out, "panel"))
        parts.append("<h4>Activation densities</h4>" + _img(figures["density"][0], out, "densities"))
        parts.append("<details><summary>most activating images, whole</summary>"
                     + "".join(_img(p, out, "top images") for p in figures["top"]) + "</details></section>")
    page = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>polysem report</title>"
            f"<style>{_STYLE}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")
    (out / "index.html").write_bytes(page.encode())
    return out
