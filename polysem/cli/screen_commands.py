"""Commands that find polysemantic channels: screen, wordnet, plot wordnet."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from polysem.cli.app import (
    DEFAULT_STORE,
    FormatOption,
    POption,
    StoreOption,
    TauOption,
    _check_format,
    _store,
    as_flags,
    command,
    plot_app,
)
from polysem.cli.printing import render_concepts, render_screen, render_sweep
from polysem.constants import GAMMA, TAU, P
from polysem.errors import PolysemError


@command()
def screen(
    tau: TauOption = TAU,
    p: POption = P,
    gamma: Annotated[float, typer.Option(help="Theorem 3.1: report pairs whose ARV cosine is below gamma.")] = GAMMA,
    concepts: Annotated[bool, typer.Option("--concepts", help="Per polysemantic channel: its relevant classes grouped into concepts (complete linkage at gamma), recorded in channel_concepts.")] = False,
    sweep: Annotated[bool, typer.Option("--sweep", help="Count the candidates over a grid of tau x p x gamma in one scan, to choose the settings.")] = False,
    fmt: FormatOption = "table",
    limit: Annotated[int | None, typer.Option(help="Show at most N pairs (lowest cosine first), or N channels with --concepts.")] = None,
    correct_only: Annotated[bool, typer.Option(help="Use only correctly classified train images.")] = False,
    store: StoreOption = DEFAULT_STORE,
):
    """Polysemantic candidates: channels relevant for two classes with dissimilar ARVs, or (--concepts) their concepts."""
    _check_format(fmt)
    from polysem.query.screening import why_empty

    target = _store(store)
    if sweep:
        if concepts or limit is not None or (tau, p, gamma) != (TAU, P, GAMMA):
            raise PolysemError("--sweep counts candidates over its own grid of tau, p and gamma; drop --concepts, "
                               "--limit, --tau, --p and --gamma")
        from polysem.query.screening import sweep as run_sweep

        render_sweep(run_sweep(target, correct_only=correct_only), fmt)
        return
    if concepts:
        from polysem.method.concepts import channel_concepts

        result = channel_concepts(target, tau=tau, p=p, gamma=gamma, limit=limit, correct_only=correct_only)
        if fmt == "json":  # one object per channel; the sizes are the lengths of the concepts
            result = result.select(["channel", "concepts", "names", "min_cosine"])
        render_concepts(result, fmt, title=f"concepts of polysemantic channels (tau={tau}, p={p}, gamma={gamma})")
        if result.num_rows == 0:
            typer.echo(as_flags(why_empty(target, tau=tau, p=p, gamma=gamma, correct_only=correct_only)), err=True)
        return
    from polysem.query.screening import polysemantic_pairs

    result = polysemantic_pairs(target, tau=tau, p=p, gamma=gamma, limit=limit, correct_only=correct_only)
    render_screen(result, fmt, title=f"polysemantic pairs (tau={tau}, p={p}, gamma={gamma})")
    if result.num_rows == 0:  # an empty answer says why (on stderr: stdout stays the table or the JSON)
        typer.echo(as_flags(why_empty(target, tau=tau, p=p, gamma=gamma, correct_only=correct_only)), err=True)


@command()
def wordnet(
    tau: TauOption = TAU,
    p: POption = P,
    wordnet_dir: Annotated[Path | None, typer.Option(help="A WordNet 3.0 dict folder to use instead of nltk's data.")] = None,
    store: StoreOption = DEFAULT_STORE,
):
    """WordNet path similarity of every class pair sharing a relevant channel, into class_similarity."""
    from polysem.method.wordnet import compute_class_similarity

    counts = compute_class_similarity(_store(store), tau, p, wordnet_dir)
    if counts["pairs"] == 0 and not counts["skipped_without_wnid"]:
        typer.echo(as_flags(f"nothing to score: no two classes share a relevant channel at tau {tau}, p {p}; lower "
                            "`tau` or `p` (`polysem screen --sweep` shows the counts)"))
        return
    typer.echo(f"{counts['pairs']} class pairs scored into class_similarity"
               + (f"; {counts['skipped_without_wnid']} skipped (class without wnid)" if counts["skipped_without_wnid"] else ""))


@command(plot_app, name="wordnet")
def plot_wordnet(
    out: Annotated[str, typer.Option(metavar="FILE", help="Figure file to write (.png, .svg or .pdf).")] = "wordnet.png",
    tau: TauOption = TAU,
    p: POption = P,
    gamma: Annotated[float, typer.Option(help="Draw the gamma line here.")] = GAMMA,
    figure_format: Annotated[str | None, typer.Option(help="png, svg or pdf. [default: the --out suffix's, else png]")] = None,
    store: StoreOption = DEFAULT_STORE,
):
    """Scatter of WordNet similarity over ARV cosine for all class pairs sharing a channel (supplement Fig. 4)."""
    from polysem.figures.plots import wordnet_scatter
    from polysem.method.wordnet import similarity_points

    target = _store(store)
    path = target.check_outside(out)
    fmt = _figure_format(path, figure_format)
    points = similarity_points(target, tau, p)
    drawn = wordnet_scatter(points, path, tau, p, gamma, figure_format=fmt)
    typer.echo(f"{len(points)} points ({len({(c1, c2) for _, _, c1, c2 in points})} distinct class pairs) -> {drawn}")


def _figure_format(out: Path, figure_format: str | None) -> str:
    """--figure-format, else the --out suffix's; a suffix that names another figure format is refused."""
    from polysem.figures.plots import FIGURE_FORMATS

    suffix = out.suffix.lower().lstrip(".")
    if figure_format is not None and figure_format not in FIGURE_FORMATS:
        raise PolysemError(f"--figure-format must be one of {', '.join(FIGURE_FORMATS)}, got '{figure_format}'")
    if suffix not in FIGURE_FORMATS:
        raise PolysemError(f"--out {out}: name a .png, .svg or .pdf file (the figure is written to exactly that path)")
    if figure_format is not None and suffix != figure_format:
        raise PolysemError(f"--out {out} names a .{suffix} file but --figure-format is {figure_format}; make them agree")
    return suffix
