"""Printing Arrow results for a person: rich tables and summaries. CSV and JSON text come from the one
serialiser, `polysem.query.serialise`, so the terminal and files never disagree. Every name and value
is shown with its control and bidirectional characters escaped (`polysem.util.text`)."""

from __future__ import annotations

import json
import math
import sys
import textwrap

import pyarrow as pa
from rich.console import Console
from rich.table import Table
from rich.text import Text

from polysem.query.serialise import to_csv, to_json
from polysem.util.readings import FRACTIONS_NOTE, UNBOUNDED, fractions_outside
from polysem.util.text import escape_controls

FORMATS = ("table", "csv", "json")
NARROW = 100  # `screen`, `runs` and `evaluate` fit a terminal this wide when there is no terminal to ask


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


def render(result: pa.Table, fmt: str = "table", title: str | None = None) -> None:
    """Print a result to stdout in the chosen format."""
    if fmt == "json":
        sys.stdout.write(to_json(result) + "\n")
    elif fmt == "csv":
        sys.stdout.write(to_csv(result))
    else:
        table = Table(title=Text(escape_controls(title)) if title else None)
        for name in result.column_names:
            table.add_column(Text(escape_controls(name)), no_wrap=True)
        for row in result.to_pylist():
            # Text, not str: a value like [blue] is data, not rich markup
            table.add_row(*(Text(_cell(row[name])) for name in result.column_names))
        console = Console()
        if not console.is_terminal:  # piped or captured: no terminal width to respect
            console = Console(width=240)
        console.print(table)
        console.print(f"{result.num_rows} row{'s' if result.num_rows != 1 else ''}", style="dim")


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
    """headers: (name, kind); kind "id" is never cut, "name" is cut with an ellipsis when the
    terminal is too narrow, "number" is right-aligned."""
    rows = [[escape_controls(cell) for cell in row] for row in rows]
    table = Table(pad_edge=False, box=None, header_style="bold")
    for name, kind in headers:
        if kind == "id":
            width = max([len(name), *(len(r[len(table.columns)]) for r in rows)])
            table.add_column(name, no_wrap=True, min_width=width)
        elif kind == "name":
            table.add_column(name, no_wrap=True, overflow="ellipsis", ratio=1)
        else:
            table.add_column(name, no_wrap=True, justify="right")
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))  # Text, not str: a name like [blue] is not markup
    console = _narrow_console()
    console.print(escape_controls(title), markup=False, highlight=False)
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


def render_verification(result: dict, title: str) -> None:
    """`polysem verify`: per new channel, the classes it is relevant for grouped by concept (its own, another
    concept's, no concept's), the lowest ARV cosine among them, and its verdict with the reason."""
    def ids(values) -> str:
        return ", ".join(map(str, values)) or "-"

    rows = [[c["unit"], ids(c["own_classes"]), ids(c["other_concept_classes"]), ids(c["unrelated_classes"]),
             _number(c["min_cosine"], 3), "yes" if c["serves"] and c["monosemantic"] else "no"]
            for c in result["channels"]]
    _print_summary(title, [("unit", "id"), ("own concept", "name"), ("other concept", "name"), ("no concept", "name"),
                           ("min cosine", "number"), ("ok", "id")], rows, len(rows))
    for c in result["channels"]:
        _note(f"{c['unit']}: {c['reason']}")


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


def render_visualization(result: dict | list[dict], title: str) -> None:
    """`polysem visualize`: per unit (and seed) its activation on its own image, the selectivity (or why it has
    none) and the image's file name, or "failed" for a unit with no picture, in 100 columns.
    result: one seed's {unit: {...}} or a list of them (`seeds`)."""
    per_seed = result if isinstance(result, list) else [result]
    several = len(per_seed) > 1
    rows = []
    for one in per_seed:
        for unit, v in one.items():
            selectivity = ("-" if not unit.startswith("c") or v.get("failed") else
                           "unbounded" if v["selectivity"] is None else _number(v["selectivity"], 3))
            image = "failed (below)" if v.get("failed") else v["image"].rsplit("/", 1)[-1]
            rows.append([unit, *([str(v["seed"])] if several else []), _number(v["activation"], 4), selectivity, image])
    headers = [("unit", "id"), *([("seed", "id")] if several else []), ("activation", "number"),
               ("selectivity", "number"), ("image", "name")]
    _print_summary(title, headers, rows, len(rows))
    _note("activation: the unit's spatially summed activation on its own image; selectivity (c'j only): that "
          "activation over the largest other new unit's on the same image")
    if any(unit.startswith("c") and not v.get("failed") and v["selectivity"] is None
           for one in per_seed for unit, v in one.items()):
        _note(f"unbounded selectivity: {UNBOUNDED}")


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


def render_evaluation(result: dict, concepts: list[list[int]], names: dict[int, str], title: str) -> None:
    """`polysem evaluate`: per concept j, its classes by name, images counted, the fractions of its
    activation on each new channel c'_1..c'_k and on r (a k x (k + 1) table)."""
    k = len(concepts)
    rows = [[str(j), _concept(concepts[j - 1], names), str(result[f"concept{j}"]["n_images"]),
             *(_number(f, 3) for f in result[f"concept{j}"]["fractions"]), _number(result[f"concept{j}"]["frac_residual"], 3)]
            for j in range(1, k + 1)]
    headers = [("concept", "id"), ("classes", "name"), ("images", "number"),
               *((f"on c'{u}", "number") for u in range(1, k + 1)), ("on r", "number")]
    _print_summary(title, headers, rows, len(rows))
    if fractions_outside([result[f"concept{j}"]["fractions"] + [result[f"concept{j}"]["frac_residual"]]
                          for j in range(1, k + 1)]):
        _note(f"note: {FRACTIONS_NOTE}")


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
