"""Figures, drawn from the data handed to them: the WordNet-over-cosine scatter (supplement Fig. 4),
the activation densities, the Fig. 1 panel, the top images, the whole picture (each unit's top images over
every class, with their class histogram) and the feature visualisations of a run.

Figures are built with matplotlib's object API (`Figure`), never pyplot, so nothing
here chooses a backend or keeps global state; `savefig` renders PNGs with Agg.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from polysem.constants import GAMMA, TAU, P

__all__ = ["FIGURE_FORMATS", "activation_density", "panel", "run_figures", "save", "selection_caption", "top_images", "visualizations", "whole_picture", "wordnet_scatter"]


def wordnet_scatter(points: list[tuple[float, float, int, int]], out: str | Path, tau: float = TAU, p: float = P,
                    gamma: float = GAMMA, *, figure_format: str | None = None) -> Path:
    """WordNet path similarity over ARV cosine, one point per (channel, class pair): `points` are
    (cosine, similarity, class1, class2) (`polysem.method.wordnet.similarity_points`). A class pair that
    shares several channels has several points; the legend counts both."""
    xs = [point[0] for point in points]
    ys = [point[1] for point in points]
    n_pairs = len({(point[2], point[3]) for point in points})
    figure = Figure(figsize=(6, 4.5))
    axes = figure.subplots()
    axes.scatter(xs, ys, s=10, alpha=0.6, color="tab:blue",
                 label=f"{len(points)} points: (channel, class pair) sharing the channel,\n"
                       f"{n_pairs} distinct class pairs")
    axes.axvline(gamma, color="tab:red", linestyle="--", label=f"gamma = {gamma}")
    axes.set_xlabel("cosine similarity of the two classes' ARVs")
    axes.set_ylabel("WordNet path similarity of the two classes")
    axes.set_title(f"Semantic vs ARV similarity (tau={tau}, p={p})")
    axes.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    return save(figure, out, figure_format)


FIGURE_FORMATS = ("png", "svg", "pdf")


def save(figure: Figure, out: str | Path, figure_format: str | None = None) -> Path:
    """Write the figure (PNG, or `figure_format`: svg or pdf) so that it appears complete or not at all."""
    from polysem.util.atomic import atomic_path

    out = Path(out)
    suffix = out.suffix.lower().lstrip(".")
    fmt = figure_format or (suffix if suffix in FIGURE_FORMATS else "png")
    if fmt not in FIGURE_FORMATS:
        raise ValueError(f"figure format must be one of {', '.join(FIGURE_FORMATS)}, got {fmt!r}")
    if suffix != fmt:  # write exactly the path asked for, never a sibling with another suffix
        raise ValueError(f"{out} does not end in .{fmt}; name the file for its format")
    # fixed metadata: the same figure gives the same bytes (no creation date in SVG or PDF)
    metadata = {"svg": {"Date": None}, "pdf": {"CreationDate": None}}.get(fmt, {})
    import matplotlib

    # a fixed salt for the SVG's element ids: the same figure gives the same bytes
    with atomic_path(out) as tmp, matplotlib.rc_context({"svg.hashsalt": "polysem"}):
        figure.savefig(tmp, dpi=120, format=fmt, metadata=metadata)
    return out


def _concept_label(names: dict[int, str], classes: list[int]) -> str:
    return " + ".join(names[c] for c in classes)


def activation_density(run: dict, activations: list[dict], tau: float, names: dict[int, str], out: Path) -> Path:
    """KDE of the original channel's and of c'1..c'k's activations, one panel per concept."""
    from matplotlib.mlab import GaussianKDE

    k_concepts = len(run["concepts"])
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
    units = [(lambda r: r["activation"], f"original {run['channel']}", "black"),
             *((lambda r, j=j: r["activations"][j], f"c'{j + 1}", colours[j % len(colours)]) for j in range(k_concepts))]
    figure = Figure(figsize=(5.5 * k_concepts, 4))
    for k, ax in zip(range(1, k_concepts + 1), figure.subplots(1, k_concepts, squeeze=False)[0], strict=True):
        rows = [r for r in activations if r["concept"] == k and r["relative_attribution"] is not None
                and r["relative_attribution"] >= tau]
        for value, unit, colour in units:
            values = np.array([value(r) for r in rows], dtype=float)
            if len(values) > 1 and values.std() > 0:
                grid = np.linspace(values.min() - values.std(), values.max() + values.std(), 200)
                ax.plot(grid, GaussianKDE(values)(grid), color=colour, label=unit)
            elif len(values):
                ax.axvline(values[0], color=colour, label=unit)
        ax.set_title(f"concept {k}: {_concept_label(names, run['concepts'][k - 1])}\n"
                     f"{len(rows)} val images with relative attribution >= tau = {tau}", fontsize=10)
        ax.set_xlabel("spatially summed activation")
        ax.set_ylabel("density")
        if rows:
            ax.legend()
        else:  # nothing to draw: say so on the axes instead of an empty legend
            ax.text(0.5, 0.5, f"no val image of this concept reaches tau = {tau}", ha="center", va="center",
                    transform=ax.transAxes, fontsize=9, color="dimgray")
    figure.suptitle(f"run {run['run_id']}: channel {run['channel']} before and after disentanglement")
    figure.tight_layout()
    return save(figure, out)


CAPTION_POINTS = 11  # the panel's caption: legible when the figure is printed a page wide


def selection_caption(facts: dict, layer: str) -> str:
    """What the top images are: split, filter, how many, which classes, how the photos are shown."""
    concepts = ", ".join(f"concept {j} = {' + '.join(classes)}" for j, classes in facts["classes"].items())
    if facts.get("no_field"):
        patches = (f"Patches: the whole image (layer {layer} is a Linear over tokens or positions: its units have "
                   "no receptive-field box).")
    elif facts.get("whole_field"):
        patches = (f"Patches: the whole image (the receptive field of every most activating position of layer "
                   f"{layer} covers it).")
    else:
        patches = (f"Patches: receptive field of the most activating position of layer {layer}"
                   + ("; grey: beyond the image border" if facts.get("padded") else "") + ".")
    return (f"{facts['split']} split, {concepts}: per unit the {facts['top']} most activating of {facts['n_images']} "
            f"images (no tau filter), {facts['shown']} shown, balanced between the concepts when both appear. "
            f"{patches} {facts['photo_note']}.")


def _show(ax, pixels: np.ndarray) -> None:
    ax.imshow(pixels, cmap="gray" if pixels.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _patch_title(patch) -> str:
    where = "" if patch.box or patch.no_field else "\n(every position equal)"
    return f"{patch.class_name}\nact {patch.activation:.3g}{where}"


def _vis_title(row: dict) -> str:
    own = _unit_activation(row, row["unit"])
    text = f"feature visualisation\n{row['method']}, {row['steps']} steps\nact {own:.3g}"
    if row["selectivity"] is not None:
        text += f", selectivity {row['selectivity']:.3g}"
    elif row["unit"].startswith("c"):
        text += ", selectivity unbounded"
    return text


def _unit_activation(row: dict, unit: str) -> float | None:
    """A unit's activation on a visualisation row's image: act_original, act_r, or c'_j from act_concepts."""
    if unit in ("original", "r"):
        return row[f"act_{unit}"]
    concepts = row.get("act_concepts") or [row.get("act_c1"), row.get("act_c2")]
    return concepts[int(unit[1:]) - 1]


def panel(run: dict, units: dict, facts: dict, vis_rows: list[dict], vis_images: dict, layer: str, out: Path) -> Path:
    """The paper's Fig. 1 for one run: rows original, c'1..c'k; columns the feature visualisation
    and the most activating patches."""
    shown = max([len(u.patches) for u in units.values()] + [1])
    # constrained layout gives the caption the room it needs, no more: no band of fixed height under it
    figure = Figure(figsize=(2.0 * (shown + 1) + 1.2, 2.9 * len(units) + 1.4), layout="constrained")
    grid = figure.subplots(len(units), shown + 1, squeeze=False)
    by_unit: dict[str, dict] = {}
    for r in vis_rows:  # the first seed's visualisation of each unit
        by_unit.setdefault(r["unit"], r)
    for axes, (unit, images) in zip(grid, units.items(), strict=True):
        first = axes[0]
        row = by_unit.get(unit)
        if row is not None and row.get("image") in vis_images:
            _show(first, vis_images[row["image"]])
            first.set_title(_vis_title(row), fontsize=7)
        elif row is not None and row.get("failure"):
            _failed(first, row["failure"])
        else:
            first.set_xticks([])
            first.set_yticks([])
            first.text(0.5, 0.5, f"no feature\nvisualisation yet:\npolysem visualize\n{run['run_id']}",
                       ha="center", va="center", fontsize=7, transform=first.transAxes)
        label = images.label + ("\ncarries only its bias\non these images" if images.bias_only else "")
        first.set_ylabel("\n".join(textwrap.wrap(label, 22)), fontsize=8)
        for ax, patch in zip(axes[1:], images.patches, strict=False):
            _show(ax, patch.crop)
            ax.set_title(_patch_title(patch), fontsize=7)
        for ax in axes[1 + len(images.patches):]:
            ax.axis("off")
    width_chars = int(figure.get_figwidth() * 72 / (CAPTION_POINTS * 0.55))  # characters of the caption a line holds
    figure.suptitle(f"run {run['run_id']}: channel {run['channel']} and its disentangled units\n"
                    + "\n".join(textwrap.wrap(selection_caption(facts, layer), width_chars)), fontsize=CAPTION_POINTS)
    return save(figure, out)


def top_images(run: dict, images, facts: dict, out: Path) -> Path:
    """One unit's shown images, whole, with the receptive field of the most activating position boxed."""
    n = max(len(images.patches), 1)
    figure = Figure(figsize=(2.6 * n, 3.4))
    for ax, patch in zip(figure.subplots(1, n, squeeze=False)[0], images.patches, strict=False):
        _show(ax, patch.photo)
        if patch.box:
            top, left, bottom, right = patch.box
            ax.add_patch(Rectangle((left - 0.5, top - 0.5), right - left, bottom - top, fill=False, edgecolor="red",
                                   linewidth=2))
        ax.set_title(_patch_title(patch), fontsize=9)
    title = f"run {run['run_id']}: most activating val images of {images.label}"
    if images.bias_only:
        title += " (it carries only its bias on them)"
    field = ("no box: a Linear's unit over tokens or positions has no receptive field" if facts.get("no_field")
             else "box: receptive field of the most activating position")
    figure.suptitle(title + f"\n{facts['photo_note']}; {field}", fontsize=9)
    figure.tight_layout(rect=(0, 0, 1, 0.85))
    return save(figure, out)


# the run's concepts j = 1, 2, ... in these colours; a class of no concept in NO_CONCEPT, which stands out
CONCEPT_COLOURS = ("tab:blue", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")
NO_CONCEPT = "tab:red"
MAX_BARS = 10  # classes drawn per histogram; the rest are one bar


def _concept_colour(concept: int | None) -> str:
    return NO_CONCEPT if concept is None else CONCEPT_COLOURS[(concept - 1) % len(CONCEPT_COLOURS)]


def _own_share(unit, histogram: list[dict]) -> float:
    """The share of a unit's top images from its own concept (any concept of the run for the original)."""
    return sum(h["share"] for h in histogram
               if h["concept"] is not None and (unit.own is None or h["concept"] == unit.own))


def whole_picture(data, out: Path) -> Path:
    """Each unit (original, c'1..c'k) of a run over every class of the split, one row per unit: its first
    most activating images (class name under each, coloured by the run's concept of the class, red for a
    class of no concept) and the class histogram of its top n, bars coloured the same way (hatched: a class
    of another concept than the unit's). A unit whose top images come from outside its concept shows red
    or hatched bars. `data` is a `polysem.method.figure_data.WholePicture`."""
    from matplotlib.patches import Patch as LegendPatch

    units = list(data.units.values())
    shown = max([len(u.shown) for u in units] + [1])
    rows = max(len(units), 1)
    figure = Figure(figsize=(1.7 * shown + 5.5, 2.2 * rows + 1.2))
    grid = figure.add_gridspec(rows, shown + 1, width_ratios=[1.0] * shown + [3.2])
    for row, unit in enumerate(units):
        for col in range(shown):
            ax = figure.add_subplot(grid[row, col])
            if col >= len(unit.shown):
                ax.axis("off")
                continue
            image = unit.shown[col]
            _show(ax, image.photo)
            colour = _concept_colour(image.concept)
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(3)
            ax.set_xlabel(f"{textwrap.shorten(image.class_name, 18, placeholder='...')}\nact {image.activation:.3g}",
                          fontsize=7, color=colour)
            if col == 0:
                ax.set_ylabel("\n".join(textwrap.wrap(unit.label, 22)), fontsize=8)
        bars = figure.add_subplot(grid[row, shown])
        drawn = unit.histogram[:MAX_BARS]
        rest = unit.histogram[MAX_BARS:]
        labels = [textwrap.shorten(f"{h['class_id']} {h['name']}", 24, placeholder="...") for h in drawn]
        counts = [h["n_images"] for h in drawn]
        colours = [_concept_colour(h["concept"]) for h in drawn]
        hatches = ["//" if unit.own is not None and h["concept"] is not None and h["concept"] != unit.own else ""
                   for h in drawn]
        if rest:
            labels.append(f"{len(rest)} other classes")
            counts.append(sum(h["n_images"] for h in rest))
            colours.append("lightgray")
            hatches.append("")
        positions = list(range(len(counts)))
        for y, count, colour, hatch in zip(positions, counts, colours, hatches, strict=True):
            bars.barh(y, count, color=colour, hatch=hatch, edgecolor="black", linewidth=0.5)
            bars.text(count, y, f" {count}", va="center", fontsize=7)
        bars.set_yticks(positions, labels, fontsize=7)
        bars.invert_yaxis()
        bars.set_xlim(0, max(counts + [1]) * 1.2)
        bars.tick_params(axis="x", labelsize=7)
        n_top = len(unit.top)
        whose = "the run's concepts" if unit.own is None else f"concept {unit.own}"
        bars.set_title("\n".join(textwrap.wrap(f"classes of its top {n_top} of {data.n_images} {data.split} images: "
                                                f"{_own_share(unit, unit.histogram):.0%} from {whose}", 44)),
                       fontsize=8)
        bars.set_xlabel("images among its top", fontsize=7)
    legend = [LegendPatch(facecolor=_concept_colour(j), edgecolor="black",
                          label=f"concept {j}: {textwrap.shorten(' + '.join(names), 40, placeholder='...')}")
              for j, names in data.concepts.items()]
    legend.append(LegendPatch(facecolor=NO_CONCEPT, edgecolor="black", label="class of no concept of the run"))
    legend.append(LegendPatch(facecolor="white", hatch="//", edgecolor="black",
                              label="class of another concept than the unit's"))
    figure.legend(handles=legend, loc="upper center", ncol=min(len(legend), 4), fontsize=7,
                  bbox_to_anchor=(0.5, 1 - 0.45 / figure.get_figheight()))
    figure.suptitle(f"run {data.run['run_id']}: channel {data.run['channel']} and its units over every class of "
                    f"the {data.split} split (top {data.n} per unit, not only the concept classes); "
                    f"{data.photo_note or 'photos as files'}", fontsize=8)
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.75 / figure.get_figheight()))
    return save(figure, out)


def _failed(ax, reason: str) -> None:
    """An empty cell that says why a unit has no feature visualisation."""
    ax.set_xticks([])
    ax.set_yticks([])
    ax.text(0.5, 0.5, "\n".join(textwrap.wrap("failed: " + (reason or "no image"), 26)), ha="center", va="center",
            fontsize=6, transform=ax.transAxes)


def visualizations(run: dict | None, rows: list[dict], images: dict, labels: dict[str, str], out: Path) -> Path:
    """The recorded feature visualisations side by side: a column per unit, a row per seed, with their
    activations and selectivity; a unit whose visualisation failed shows why instead of a picture.

    images: {image path: pixels} (`figure_data.visualisation_images`)."""
    units = list(dict.fromkeys(r["unit"] for r in rows))
    seeds = list(dict.fromkeys(r["seed"] for r in rows))
    by_cell = {(r["seed"], r["unit"]): r for r in rows}
    # constrained layout makes room for each picture's wrapped activation line below it
    figure = Figure(figsize=(3.0 * max(len(units), 1), 3.4 * max(len(seeds), 1) + 0.4), layout="constrained")
    grid = figure.subplots(max(len(seeds), 1), max(len(units), 1), squeeze=False)
    for axes, seed in zip(grid, seeds, strict=False):
        for ax, unit in zip(axes, units, strict=False):
            row = by_cell.get((seed, unit))
            if row is None:
                ax.axis("off")
                continue
            label = "\n".join(textwrap.wrap(labels.get(unit, unit), 30)) + (f" (seed {seed})" if len(seeds) > 1 else "")
            if row.get("image") in images:
                _show(ax, images[row["image"]])
                ax.set_title(label + "\n" + _vis_title(row).replace("feature visualisation\n", ""), fontsize=7)
            else:
                _failed(ax, row.get("failure") or "")
                ax.set_title(label, fontsize=7)
                continue
            shown = ["original", *(f"c{j}" for j in range(1, len(row.get("act_concepts") or []) + 1)), "r"]
            acts = ", ".join(f"{u} {_unit_activation(row, u):.3g}" for u in shown
                             if _unit_activation(row, u) is not None)
            ax.set_xlabel("\n".join(textwrap.wrap(acts, 36)), fontsize=6)
    subject = f"run {run['run_id']}" if run else f"channel {rows[0]['channel']}"
    seed_text = f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"
    figure.suptitle(f"{subject}: feature visualisations ({rows[0]['size']} px, {seed_text})", fontsize=9)
    return save(figure, out)


def run_figures(data, tau: float, out_dir: Path, figure_format: str = "png") -> dict[str, list[Path]]:
    """Every figure of a run into out_dir from its `RunFigures`: densities, the Fig. 1 panel, the top
    images, the whole picture (top images over every class) and the visualisations, as png, svg or pdf."""
    if figure_format not in FIGURE_FORMATS:
        raise ValueError(f"figure format must be one of {', '.join(FIGURE_FORMATS)}, got {figure_format!r}")
    out_dir = Path(out_dir)
    run, run_id = data.run, data.run["run_id"]
    figures = {"density": [activation_density(run, data.activations, tau, data.names,
                                              out_dir / f"run-{run_id}-density.{figure_format}")],
               "panel": [panel(run, data.units, data.facts, data.vis_rows, data.vis_images, data.layer,
                               out_dir / f"run-{run_id}-panel.{figure_format}")],
               "top": [top_images(run, unit_images, data.facts, out_dir / f"run-{run_id}-top-{unit}.{figure_format}")
                       for unit, unit_images in data.units.items()]}
    figures["whole"] = ([whole_picture(data.whole, out_dir / f"run-{run_id}-whole.{figure_format}")]
                        if data.whole is not None else [])
    figures["visualizations"] = ([visualizations(run, data.vis_rows, data.vis_images, data.labels,
                                                 out_dir / f"run-{run_id}-visualizations.{figure_format}")]
                                 if data.vis_rows else [])
    return figures
