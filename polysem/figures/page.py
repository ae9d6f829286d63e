"""The report page: `index.html` and its images in one folder, drawn from `ReportData`.

No server, no JavaScript, no file outside the folder: a researcher opens it in a
browser or sends the folder to a colleague. It shows what the store holds, the
screening table, the WordNet-vs-cosine figure and, per run, its numbers, the Fig. 1
panel, the whole picture (each unit's top images over every class), the densities and the
feature visualisations. Runs come in the order of the
paper's table (its channels first, for its model and layer), then as `polysem runs`
lists them.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

from polysem.constants import EVAL_SPLIT
from polysem.figures import plots
from polysem.util.readings import FRACTIONS_NOTE, SELECTION_TEXT, UNBOUNDED, views_disagree
from polysem.util.text import escape_controls

__all__ = ["write_page"]

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
    """A value as HTML text: markup escaped, control and bidirectional characters shown as escapes."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return html.escape(escape_controls(", ".join(str(v) for v in value)))
    return html.escape(escape_controls(str(value)))


def _table(rows: list[dict], columns: list[str] | None = None) -> str:
    if not rows:
        return '<p class="note">(none)</p>'
    columns = columns or list(rows[0])
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_e(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(path: Path, out: Path, alt: str) -> str:
    return f'<img src="{html.escape(path.relative_to(out).as_posix())}" alt="{html.escape(alt)}">'


def _file_name(value: str) -> str:
    """A recorded path shown by its file name (a weights file); other values (imagenet, random:0) as they are."""
    return Path(value).name if isinstance(value, str) and os.path.isabs(value) else value


def _layer(info: dict) -> str:
    """The layer's name; a Linear's says so and which positions count (a conv's shape records neither)."""
    shape = info["layer_shape"]
    if shape.get("kind") != "linear":
        return info["layer"]
    return f"{info['layer']} (Linear per token or position, positions: {shape.get('positions') or 'all'})"


def write_page(data, out: Path, tau: float, figure_format: str = "png") -> Path:
    """The page and its images in `out` from a `ReportData`; returns `out`. Each run is drawn at the tau of
    its recorded evaluation; `tau` is for runs not evaluated yet."""
    images = out / "img"
    images.mkdir(parents=True, exist_ok=True)
    info, names = data.info, data.names
    parts = [f"<h1>polysem report: {_e(Path(info['store']).name)}</h1>",
             f'<p class="note">polysem {_e(info["polysem_version"])}; store created {_e(info["created_at"])}</p>',
             "<h2>What the store holds</h2>",
             # a page meant to be shared names no folder of the machine it was made on: files by their names
             _table([{"model": info["model"], "weights": _file_name(info["weights"]), "layer": _layer(info),
                      "in -> out channels": f"{info['layer_shape']['in_channels']} -> {info['layer_shape']['out_channels']}",
                      "transform": info["transform"]}]),
             _table([{"split": s, **c} for s, c in info["splits"].items()], ["split", "images", "classes", "unreadable"]),
             "<details><summary>classes</summary>" + _table(data.classes) + "</details>"]
    parts += _screening(data, images, out, figure_format)
    summary = [r.run["summary"] for r in data.runs]
    parts.append(f"<h2>Disentangled channels ({len(summary)} runs)</h2>")
    parts.append(_table([{**r, "concepts": " / ".join(" + ".join(names[c] for c in concept) for concept in r["concepts"]),
                          "fractions": [[round(f, 3) if f is not None else None for f in row] for row in r["fractions"]]
                          if r["fractions"] else None} for r in summary],
                        ["run_id", "channel", "concepts", "rho", "n_sources", "n_shared", "max_logit_diff",
                         "n_images", "fractions", "resolved"]))
    parts.append('<p class="note">fractions: row j is concept j; on its val images (relative attribution >= tau), '
                 "the mean fraction of the original activation carried by c'1, c'2, ... (a good split has large "
                 f"numbers on the diagonal; {FRACTIONS_NOTE}); resolved: `polysem verify` found every new channel "
                 "serving its concept only and monosemantic (empty until it ran; each run's section gives the "
                 "reasons).</p>")
    for report in data.runs:
        parts += _run_section(report, names, tau, images, out, figure_format)
    page = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>polysem report</title>"
            f"<style>{_STYLE}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")
    (out / "index.html").write_bytes(page.encode())
    return out


def _screening(data, images: Path, out: Path, figure_format: str = "png") -> list[str]:
    parts = ["<h2>Screening: polysemantic candidates</h2>"]
    if data.pairs is not None:
        tau, p, gamma = data.thresholds
        parts.append(f'<p class="note">Channels relevant for two classes (tau {tau}, p {p}) whose ARVs have cosine '
                     f'below gamma {gamma}, lowest first ({_e(data.thresholds_source)} thresholds); WordNet path '
                     'similarity once `polysem wordnet` ran.</p>')
        parts.append(_table(data.pairs, ["channel", "class1", "name1", "class2", "name2", "cosine",
                                         "wordnet_similarity", "fraction1", "fraction2"]))
    else:
        parts.append(f'<p class="note">{_e(data.pairs_error)}</p>')
    if data.wordnet_points is not None:
        drawn = plots.wordnet_scatter(data.wordnet_points, images / "wordnet.png", figure_format=figure_format)
        parts.append(_img(drawn, out, "WordNet similarity over ARV cosine"))
    else:
        parts.append(f'<p class="note">WordNet figure: {_e(data.wordnet_error)}</p>')
    return parts


def _verification(report, names: dict[int, str]) -> list[str]:
    """The verdict of `polysem verify` per new unit, with the reason, at the settings it ran with."""
    if report.verification is None:
        return [f'<p class="note">not verified yet: polysem verify {_e(report.run["run_id"])}</p>']
    v = report.verification
    resolved = all(u["serves"] and u["monosemantic"] for u in report.verdicts)

    def named(ids) -> str:
        return ", ".join(f"{c} {names[c]}" for c in ids) or "-"

    rows = [{"unit": u["unit"], "own concept": named(u["own_classes"]), "other concept": named(u["other_concept_classes"]),
             "no concept": named(u["unrelated_classes"]), "min cosine": u["min_cosine"], "verdict": u["reason"]}
            for u in report.verdicts]
    note = (f'<p class="note">tau {_e(v["tau"])}, p {_e(v["p"])}, gamma {_e(v["gamma"])}, on {_e(v["n_images"])} '
            "train images. A new unit serves its concept when it is relevant for a class of that concept and for "
            "none of another; it is monosemantic when no two of its relevant classes have ARV cosine below gamma. "
            "The run resolves the channel only when every unit does both.</p>")
    return [f"<h4>Verification: {'resolved' if resolved else 'not resolved'}</h4>", note, _table(rows)]


_VIS_COLUMNS = ("unit", "method", "steps", "size", "seed", "act_original", "act_c1", "act_c2", "act_r", "selectivity",
                "failure")


def _disagreements(report) -> list[str]:
    """Per new unit, why the attribution verdict and the activation view disagree, when they do."""
    whole = report.figures.whole if report.figures is not None else None
    if whole is None or report.verification is None:
        return []
    texts = []
    for verdict in report.verdicts:
        unit = whole.units.get(verdict["unit"])
        if unit is None:
            continue
        own = sum(h["n_images"] for h in unit.histogram if h["concept"] == unit.own)
        text = views_disagree(verdict["unit"], verdict, own, len(unit.top), report.verification, whole.split)
        if text is not None:
            texts.append(f'<p class="note"><b>Why the views disagree.</b> {_e(text)}</p>')
    return texts


def _whole_picture(whole, drawn: list[Path], out: Path) -> list[str]:
    """Beside the panel (the concept classes only): each unit's top images over every class of the split, the
    figure and per unit the classes of its top n that lie outside its concept."""
    if whole is None or not drawn:
        return []
    rows = []
    for unit in whole.units.values():
        own = [h for h in unit.histogram if h["concept"] is not None and (unit.own is None or h["concept"] == unit.own)]
        outside = [h for h in unit.histogram if h not in own]
        rows.append({"unit": unit.label, "top images": len(unit.top),
                     "from its concept": f"{sum(h['n_images'] for h in own)} ({sum(h['share'] for h in own):.0%})",
                     "outside its concept": ", ".join(f"{h['name']} {h['n_images']}"
                                                      + (f" (concept {h['concept']})" if h["concept"] else "")
                                                      for h in outside) or "-"})
    return [f"<h4>Whole picture: top images over every {_e(whole.split)} class</h4>",
            _img(drawn[0], out, "top images over every class"),
            _table(rows),
            (f'<p class="note">The panel above ranks only the {_e(whole.split)} images of the run\'s concept classes; '
            f"here each unit ranks all {_e(whole.n_images)} {_e(whole.split)} images (its top {_e(whole.n)}, or all "
            "when fewer), with the class histogram of its top images (the original channel's concept: any of the "
            "run's). Colours: the run's concepts; red: a class of no concept; hatched: a class of another concept "
            "than the unit's. A unit whose top images come from outside its concept fires for more than its "
            "concept.</p>")]


def _run_section(report, names: dict[int, str], tau: float, images: Path, out: Path,
                 figure_format: str = "png") -> list[str]:
    run = report.run
    concepts = " / ".join(" + ".join(names[c] for c in concept) for concept in run["concepts"])
    parts = [f"<section><h3>run {_e(run['run_id'])}: channel {run['channel']}, {_e(concepts)}</h3>"]
    parts += _verification(report, names)
    if report.figures is None:
        parts.append(f'<p class="note">no {EVAL_SPLIT} images of these classes: ingest the {EVAL_SPLIT} split '
                     "for the panel and densities.</p></section>")
        return parts
    run_tau = report.tau if report.tau is not None else tau  # each run drawn at the tau it was evaluated with
    chosen = SELECTION_TEXT.get(report.selection, report.selection)
    parts.append(f'<p class="note">densities and fractions at tau {_e(run_tau)}'
                 + (" (the run's recorded evaluation)" if report.tau is not None else
                    f" (not evaluated yet: polysem evaluate {_e(run['run_id'])})")
                 + f", images selected by {_e(chosen)}</p>")
    figures = plots.run_figures(report.figures, run_tau, images, figure_format)
    vis = [{c: row[c] for c in _VIS_COLUMNS} for row in report.figures.vis_rows] if figures["visualizations"] else []
    parts.append("<h4>Feature visualisations</h4>")
    if vis:
        parts.append(_img(figures["visualizations"][0], out, "feature visualisations"))
        for v in vis:  # the other unit's activation is not positive on this image: no finite ratio
            if v["unit"].startswith("c") and v["selectivity"] is None and v["failure"] is None:
                v["selectivity"] = UNBOUNDED
        parts.append(_table(vis))
        parts.append('<p class="note">act_*: spatially summed activation of each unit on the unit\'s image; '
                     "selectivity: act(c'1)/act(c'2) on c'1's image, the reverse on c'2's.</p>")
    else:
        parts.append(f'<p class="note">none yet: polysem visualize {_e(run["run_id"])}</p>')
    parts.append("<h4>Panel (paper Fig. 1)</h4>" + _img(figures["panel"][0], out, "panel"))
    parts += _whole_picture(report.figures.whole, figures["whole"], out)
    parts += _disagreements(report)
    parts.append("<h4>Activation densities</h4>" + _img(figures["density"][0], out, "densities"))
    parts.append("<details><summary>most activating images, whole</summary>"
                 + "".join(_img(p, out, "top images") for p in figures["top"]) + "</details></section>")
    return parts
