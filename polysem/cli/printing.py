"""Printing the library's results for a person: rich tables and summaries of Arrow tables and of the typed
results (`Run`, `Evaluation`, `Verification`, `Visualization`, ...), whose fields mypy checks here. CSV and JSON
text of tables come from the one serialiser, `polysem.query.serialise`, so the terminal and files never
disagree; the JSON of a typed result is its `to_dict()`. Every name and value is shown with its control and
bidirectional characters escaped (`polysem.util.text`)."""

from __future__ import annotations

import json
import math
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
from rich.console import Console
from rich.table import Table
from rich.text import Text

from polysem.query.serialise import to_csv, to_json
from polysem.util.readings import FRACTIONS_NOTE, UNBOUNDED, fractions_outside
from polysem.util.text import escape_controls

if TYPE_CHECKING:  # the CLI starts without torch: the result types are imported where they are made
    from polysem.method.concepts import Screening
    from polysem.method.evaluation import Evaluation
    from polysem.method.runs import Run
    from polysem.method.verification import Verification
    from polysem.method.visualize import Visualization
    from polysem.method.wordnet import SimilarityCounts
    from polysem.reporting import WordnetFigure

NARROW = 80  # the width tables keep when there is no terminal to ask (a pipe, a notebook, a test)
NAME_MIN = 12  # a name column narrower than this wraps too often to read: the table turns vertical instead


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, list):
        shown = ", ".join(_cell(v) for v in value[:6])
        return f"[{shown}, ...] ({len(value)})" if len(value) > 6 else f"[{shown}]"
    return escape_controls(str(value))


def _note(text: str) -> None:
    """A note under a table, wrapped to the width the tables keep."""
    print(textwrap.fill(text, NARROW, break_on_hyphens=False))


def print_warning(text: str) -> None:
    """A `Warning:` on stderr, wrapped to the width the tables keep, its characters escaped."""
    print(textwrap.fill(escape_controls(f"Warning: {text}"), NARROW, break_on_hyphens=False), file=sys.stderr)


def print_thresholds(names: tuple[str, ...], given: tuple[float | None, ...], used: tuple[float, ...]) -> None:
    """Which thresholds a command about a run used, and whose they were: given on the command line, or the
    run's own (those it was made with)."""
    parts = [f"{name} {value} ({'given' if choice is not None else 'the run' + chr(39) + 's'})"
             for name, choice, value in zip(names, given, used, strict=True)]
    _note(f"thresholds: {', '.join(parts)}")


def render(result: pa.Table, fmt: str = "table", title: str | None = None) -> None:
    """Print a result to stdout in the chosen format."""
    if fmt == "json":
        sys.stdout.write(to_json(result) + "\n")
    elif fmt == "csv":
        sys.stdout.write(to_csv(result))
    else:
        names = [escape_controls(name) for name in result.column_names]
        cells = [[_cell(row[name]) for name in result.column_names] for row in result.to_pylist()]
        console = _narrow_console()
        if _natural_width(names, cells) > console.width:  # a cut cell would misread: one record per block
            if title:
                console.print(escape_controls(title), markup=False, highlight=False)
            _print_vertical(console, names, cells)
        else:
            table = Table(title=Text(escape_controls(title)) if title else None)
            for name in names:
                table.add_column(Text(name), no_wrap=True)
            for row in cells:
                table.add_row(*(Text(cell) for cell in row))  # Text, not str: [blue] is data, not rich markup
            console.print(table)
        console.print(f"{result.num_rows} row{'s' if result.num_rows != 1 else ''}", style="dim")


def _natural_width(names: list[str], rows: list[list[str]]) -> int:
    """The width of a boxed table showing every cell whole: each column as wide as its widest cell, plus
    rich's borders and padding (3 per column and 1)."""
    widths = [max([len(name), *(len(row[i]) for row in rows)]) for i, name in enumerate(names)]
    return sum(widths) + 3 * len(widths) + 1


def _print_vertical(console: Console, names: list[str], rows: list[list[str]]) -> None:
    """One record per block, `name  value` a line, values wrapped at the console's width and never cut: the
    view for a table too wide for the terminal."""
    key = max(len(name) for name in names)
    for i, row in enumerate(rows):
        if i:
            console.print()
        for name, cell in zip(names, row, strict=True):
            lines = textwrap.wrap(cell, max(console.width - key - 2, 20), break_on_hyphens=False) or [""]
            console.print(Text(f"{name:<{key}}  {lines[0]}"), soft_wrap=True)
            for line in lines[1:]:
                console.print(Text(f"{'':<{key}}  {line}"), soft_wrap=True)


# -- the summaries a person reads: key numbers only, ids whole, names next to ids ------------------

def _named(class_id, names: dict[int, str]) -> str:
    return f"{class_id} {names[class_id]}" if names.get(class_id) else str(class_id)


def _concept(ids, names: dict[int, str]) -> str:
    return ", ".join(_named(i, names) for i in ids)


def _number(value, digits: int = 2) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _narrow_console() -> Console:
    console = Console()
    return console if console.is_terminal else Console(width=NARROW)


def _print_summary(title: str, headers: list[tuple[str, str]], rows: list[list[str]], n: int) -> None:
    """headers: (name, kind); an "id" or a "number" (right-aligned) column and its header are never cut; a
    "name" column wraps. When the ids and numbers leave a name column fewer than NAME_MIN characters, the table
    turns vertical (one record per block) rather than cut anything."""
    rows = [[escape_controls(cell) for cell in row] for row in rows]
    console = _narrow_console()
    whole = [max([len(name), *(len(r[i]) for r in rows)]) for i, (name, _) in enumerate(headers)]
    fixed = sum(w for w, (_, kind) in zip(whole, headers, strict=True) if kind != "name") + 2 * (len(headers) - 1)
    n_names = sum(1 for _, kind in headers if kind == "name")
    console.print(escape_controls(title), markup=False, highlight=False)
    if n_names and (console.width - fixed) // n_names < min(NAME_MIN, *(w for w, (_, k) in zip(whole, headers,
                                                                                               strict=True)
                                                                          if k == "name")) \
            or not n_names and fixed > console.width:
        _print_vertical(console, [name for name, _ in headers], rows)
    else:
        table = Table(pad_edge=False, box=None, header_style="bold")
        for (name, kind), width in zip(headers, whole, strict=True):
            if kind == "name":
                table.add_column(name, overflow="fold", ratio=1)
            else:
                table.add_column(name, no_wrap=True, min_width=width, justify="right" if kind == "number" else "left")
        for row in rows:
            table.add_row(*(Text(cell) for cell in row))  # Text, not str: a name like [blue] is not markup
        console.print(table)
    console.print(f"{n} row{'s' if n != 1 else ''}", style="dim")


def render_screen(result: pa.Table, fmt: str, title: str) -> None:
    """`polysem screen`: channel, both classes with their names, cosine, WordNet similarity, fractions."""
    if fmt != "table":
        render(result, fmt)
        return
    rows = [[str(r["channel"]), _named(r["class1"], {r["class1"]: r["name1"]}),
             _named(r["class2"], {r["class2"]: r["name2"]}), _number(r["cosine"], 3),
             _number(r["wordnet_similarity"], 3), _number(r["fraction1"]), _number(r["fraction2"])]
            for r in result.to_pylist()]
    headers = [("channel", "id"), ("class 1", "name"), ("class 2", "name"), ("cosine", "number"),
               ("wordnet", "number"), ("frac 1", "number"), ("frac 2", "number")]
    _print_summary(title, headers, rows, result.num_rows)


def _concepts(concepts, names: dict[int, str]) -> str:
    return " / ".join(_concept(concept, names) for concept in concepts)


def render_concepts(result: pa.Table, fmt: str, title: str) -> None:
    """`polysem screen --concepts`: channel, its concepts (ids with names), the lowest cosine between them."""
    if fmt != "table":
        render(result, fmt)
        return
    rows = [[str(r["channel"]), " / ".join(", ".join(f"{i} {n}" for i, n in zip(ids, names, strict=True))
                                           for ids, names in zip(r["concepts"], r["names"], strict=True)),
             _number(r["min_cosine"], 3)] for r in result.to_pylist()]
    _print_summary(title, [("channel", "id"), ("concepts", "name"), ("min cosine", "number")], rows, result.num_rows)


def render_verification(result: Verification, fmt: str) -> None:
    """`polysem verify`: per new channel, the classes it is relevant for grouped by concept (its own, another
    concept's, no concept's), the lowest ARV cosine among them, and its verdict with the reason; then the run's."""
    if fmt == "json":
        print(json.dumps(result.to_dict()))
        return

    def ids(values: list[int]) -> str:
        return ", ".join(map(str, values)) or "-"

    rows = [[c.unit, ids(c.own_classes), ids(c.other_concept_classes), ids(c.unrelated_classes),
             _number(c.min_cosine, 3), "yes" if c.ok else "no"] for c in result.channels]
    title = (f"run {result.run_id}: new channels on {result.n_images} train images of classes "
             f"{', '.join(map(str, result.classes))} (tau={result.tau}, p={result.p})")
    _print_summary(title, [("unit", "id"), ("own concept", "name"), ("other concept", "name"),
                           ("no concept", "name"), ("min cosine", "number"), ("ok", "id")], rows, len(rows))
    for c in result.channels:
        _note(f"{c.unit}: {c.reason}")
    if result.resolved:
        print(f"run {result.run_id}: resolved (every new channel serves its concept and is monosemantic at "
              f"gamma={result.gamma})")
    else:
        failing = [f"{c.unit}: {c.reason}" for c in result.channels if not c.ok]
        print(escape_controls(f"run {result.run_id}: not resolved: {'; '.join(failing)}"))


def render_runs(result: pa.Table, fmt: str, names: dict[int, str]) -> None:
    """`polysem runs`: run id (whole), channel, concepts with names, rho and, per concept j, the share of
    its activation on its own new channel c'_j (the evaluation's diagonal)."""
    if fmt != "table":
        render(result, fmt)
        return
    rows = []
    for r in result.to_pylist():
        own = "/".join(_number(row[j]) for j, row in enumerate(r["fractions"] or []))
        resolved = {True: "yes", False: "no"}.get(r.get("resolved"), "")
        rows.append([r["run_id"], str(r["channel"]), _concepts(r["concepts"], names), _number(r["rho"]), own,
                     r.get("selection") or "", resolved])
    headers = [("run", "id"), ("channel", "id"), ("concepts", "name"), ("rho", "number"), ("c_j -> c'_j", "number"),
               ("selection", "id"), ("resolved", "number")]
    _print_summary("disentanglement runs (`polysem runs RUN_ID` for one run's full record)", headers, rows,
                   result.num_rows)
    _note("c_j -> c'_j: per concept j, the mean fraction of the original activation that its own new channel "
          "carries (the evaluation's diagonal; 1 is a clean split); resolved: `polysem verify`'s verdict")
    if fractions_outside(row for r in result.to_pylist() for row in (r["fractions"] or [])):
        _note(f"note: {FRACTIONS_NOTE}")


def render_visualization(result: Visualization | list[Visualization], fmt: str, subject: str) -> None:
    """`polysem visualize`: per unit (and seed) its activation on its own image, the selectivity (or why it has
    none) and the image's file name, or "failed" for a unit with no picture, in 100 columns; then why each
    failed unit failed. result: one seed's visualisation or a list of them (`seeds`); subject: the run id, or
    "channel C"."""
    from polysem.cli.app import as_flags

    if fmt == "json":
        print(json.dumps([r.to_dict() for r in result] if isinstance(result, list) else result.to_dict()))
        return
    per_seed = result if isinstance(result, list) else [result]
    several = len(per_seed) > 1
    rows = []
    for one in per_seed:
        for unit, v in one.units.items():
            selectivity = ("-" if not unit.startswith("c") or v.failed else
                           "unbounded" if v.selectivity is None else _number(v.selectivity, 3))
            image = "failed (below)" if v.failed or v.image is None else v.image.rsplit("/", 1)[-1]
            rows.append([unit, *([str(v.seed)] if several else []), _number(v.activation, 4), selectivity, image])
    headers = [("unit", "id"), *([("seed", "id")] if several else []), ("activation", "number"),
               ("selectivity", "number"), ("image", "name")]
    first = per_seed[0].first()
    seeds = ", ".join(str(r.first().seed) for r in per_seed)
    title = (f"{subject}: {first.method}, {first.steps} steps, {first.size} px, seed{'s' if several else ''} "
             f"{seeds}, {sum(r.first().seconds for r in per_seed):.1f} s on {first.device}")
    _print_summary(title, headers, rows, len(rows))
    _note("activation: the unit's spatially summed activation on its own image; selectivity (c'j only): that "
          "activation over the largest other new unit's on the same image")
    if any(unit.startswith("c") and not v.failed and v.selectivity is None
           for one in per_seed for unit, v in one.units.items()):
        _note(f"selectivity {UNBOUNDED}")
    for v in (v for r in per_seed for v in r.units.values() if v.failed):  # an entry per unit and seed
        seed_text = f"(seed {v.seed}) " if several else ""
        print(textwrap.fill(escape_controls(f"failed: {seed_text}{as_flags(v.reason or '')}"), NARROW,
                            subsequent_indent="  "))


def render_record(record: dict, fmt: str, names: dict[int, str]) -> None:
    """One run's full record, one field a line (concepts with their names); json/csv as for tables."""
    if fmt != "table":
        render(pa.Table.from_pylist([record]), fmt)
        return
    console = _narrow_console()
    width = max(len(k) for k in record)
    for key, value in record.items():
        if key == "concepts":
            text = _concepts(value, names)
        elif key in ("sources", "shared", "n_sources", "n_images", "fractions", "warnings", "bias_only"):
            text = json.dumps(value)
        elif isinstance(value, float):
            text = f"{value:.6g}"
        else:
            text = "" if value is None else str(value)
        console.print(escape_controls(f"{key:<{width}}  {text}"), markup=False, highlight=False)


def render_evaluation(result: Evaluation, fmt: str, names: dict[int, str]) -> None:
    """`polysem evaluate`: per concept j, its classes by name, images counted, the fractions of its
    activation on each new channel c'_1..c'_k and on r (a k x (k + 1) table); then the plots written."""
    if fmt == "json":
        print(json.dumps(result.to_dict()))
        return
    k = len(result.per_concept)
    rows = [[str(j), _concept(classes, names), str(c.n_images), *(_number(f, 3) for f in c.fractions),
             _number(c.frac_residual, 3)]
            for j, (classes, c) in enumerate(zip(result.concepts, result.per_concept, strict=True), start=1)]
    headers = [("concept", "id"), ("classes", "name"), ("images", "number"),
               *((f"on c'{u}", "number") for u in range(1, k + 1)), ("on r", "number")]
    _print_summary(f"run {result.run_id}: fraction of the original activation (val, tau={result.tau}, selection "
                   f"{result.selection})", headers, rows, len(rows))
    if fractions_outside([[*c.fractions, c.frac_residual] for c in result.per_concept]):
        _note(f"note: {FRACTIONS_NOTE}")
    if result.why_empty:
        _note(escape_controls(f"nothing evaluated: {result.why_empty}"))
    for path in result.plots or []:
        print(escape_controls(f"plot -> {path}"))


def render_disentangled(runs: list[Run], fmt: str, store_path: Path) -> None:
    """`polysem disentangle`: one line per run (its concepts, rho, sources, the logit check, the model's file),
    its warnings on stderr; in JSON the run (`Run.to_dict()`), or a list of them for a model of several."""
    if fmt == "json":
        rows = [json.loads(json.dumps(run.to_dict(), default=str)) for run in runs]  # times as text
        print(json.dumps(rows[0] if len(rows) == 1 else rows))
        return
    for run in runs:
        concepts_text = " / ".join(",".join(map(str, c)) for c in run.concepts)
        sources_text = " / ".join(str(len(s)) for s in run.sources)
        print(escape_controls(
            f"run {run.run_id}: channel {run.channel}, concepts {concepts_text}, "
            f"rho {run.rho} ({run.objective}), sources {sources_text} / {len(run.shared)} shared, "
            f"max |logit change| {run.max_logit_diff:.2g} "
            f"on {run.parameters['check_images']} images -> {store_path / run.artifact}"))
        for message in run.warnings:
            print(escape_controls(f"Warning: {message}"), file=sys.stderr)


def render_screening(found: Screening, fmt: str) -> None:
    """`polysem screen`: the pairs, the concepts (`--concepts`) or the sweep (`--sweep`)."""
    thresholds = f"tau={found.tau}, p={found.p}, gamma={found.gamma}"
    if found.kind == "sweep":
        render_sweep(found.table, fmt)
    elif found.kind == "concepts":
        result = found.table
        if fmt == "json":  # one object per channel; the sizes are the lengths of the concepts
            result = result.select(["channel", "concepts", "names", "min_cosine"])
        render_concepts(result, fmt, title=f"concepts of polysemantic channels ({thresholds})")
    else:
        render_screen(found.table, fmt, title=f"polysemantic pairs ({thresholds})")


def render_similarity(counts: SimilarityCounts, tau: float, p: float) -> None:
    """`polysem wordnet`: the class pairs scored, and those skipped; or why there was nothing to score."""
    from polysem.cli.app import as_flags

    skipped = counts.skipped_without_wnid
    if counts.pairs == 0 and not skipped:
        print(as_flags(f"nothing to score: no two classes share a relevant channel at tau {tau}, p {p}; lower "
                       "`tau` or `p` (`polysem screen --sweep` shows the counts)"))
        return
    print(f"{counts.pairs} class pairs scored into class_similarity"
          + (f"; {skipped} skipped (class without wnid)" if skipped else ""))


def render_wordnet_figure(drawn: WordnetFigure) -> None:
    """`polysem plot wordnet`: the points drawn and the file."""
    print(escape_controls(f"{drawn.points} points ({drawn.pairs} distinct class pairs) -> {drawn.path}"))


def render_sweep(result: pa.Table, fmt: str) -> None:
    """`polysem screen --sweep`: one line per (tau, p), the candidate channels per gamma side by side."""
    if fmt != "table":
        render(result, fmt)
        return
    gammas = sorted(set(result.column("gamma").to_pylist()))
    lines: dict[tuple, dict] = {}
    for r in result.to_pylist():
        line = lines.setdefault((r["tau"], r["p"]), {"row": r, "candidates": {}})
        line["candidates"][r["gamma"]] = (r["candidate_channels"], r["candidate_pairs"])
    rows = [[_number(tau, 3), _number(p), str(line["row"]["relevant_pairs"]), str(line["row"]["shared_channels"]),
             _number(line["row"]["min_cosine"], 3),
             *(f"{line['candidates'][g][0]}/{line['candidates'][g][1]}" for g in gammas)]
            for (tau, p), line in lines.items()]
    headers = [("tau", "number"), ("p", "number"), ("relevant", "number"), ("shared", "number"),
               ("min cos", "number"), *((f"g<{_number(g)}", "number") for g in gammas)]
    _print_summary("screening over a grid (one scan of the attributions)", headers, rows, len(rows))
    _note("relevant: (channel, class) pairs meeting Ineq. 2; shared: channels relevant for 2+ classes; min cos: their "
          "lowest ARV cosine; g<G: candidate channels/pairs below gamma G")
