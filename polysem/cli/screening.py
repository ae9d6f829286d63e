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
    command,
    plot_app,
)
from polysem.cli.output import (
    render_concepts,
    render_screen,
)
from polysem.constants import GAMMA, TAU, P


@command()
def screen(
    tau: TauOption = TAU,
    p: POption = P,
    gamma: Annotated[float, typer.Option(help="Theorem 3.1: report pairs whose ARV cosine is below gamma.")] = GAMMA,
    concepts: Annotated[bool, typer.Option("--concepts", help="Per polysemantic channel: its relevant classes grouped into concepts (complete linkage at gamma), recorded in channel_concepts.")] = False,
    fmt: FormatOption = "table",
    limit: Annotated[int | None, typer.Option(help="Show at most N pairs (lowest cosine first), or N channels with --concepts.")] = None,
    correct_only: Annotated[bool, typer.Option(help="Use only correctly classified train images.")] = False,
    store: StoreOption = DEFAULT_STORE,
):
    """Polysemantic candidates: channels relevant for two classes with dissimilar ARVs, or (--concepts) their concepts."""
    _check_format(fmt)
    if concepts:
        from polysem.method.concepts import channel_concepts

        result = channel_concepts(_store(store), tau=tau, p=p, gamma=gamma, limit=limit, correct_only=correct_only)
        if fmt == "json":  # one object per channel; the sizes are the lengths of the concepts
            result = result.select(["channel", "concepts", "names", "min_cosine"])
        render_concepts(result, fmt, title=f"concepts of polysemantic channels (tau={tau}, p={p}, gamma={gamma})")
        return
    from polysem.query.screening import polysemantic_pairs

    result = polysemantic_pairs(_store(store), tau=tau, p=p, gamma=gamma, limit=limit, correct_only=correct_only)
    render_screen(result, fmt, title=f"polysemantic pairs (tau={tau}, p={p}, gamma={gamma})")


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
    typer.echo(f"{counts['pairs']} class pairs scored into class_similarity"
               + (f"; {counts['skipped_without_wnid']} skipped (class without wnid)" if counts["skipped_without_wnid"] else ""))


@command(plot_app, name="wordnet")
def plot_wordnet(
    out: Annotated[str, typer.Option(metavar="FILE", help="PNG file to write.")] = "wordnet.png",
    tau: TauOption = TAU,
    p: POption = P,
    gamma: Annotated[float, typer.Option(help="Draw the gamma line here.")] = GAMMA,
    store: StoreOption = DEFAULT_STORE,
):
    """Scatter of WordNet similarity over ARV cosine for all class pairs sharing a channel (supplement Fig. 4)."""
    from polysem.figures.plots import wordnet_scatter
    from polysem.method.wordnet import similarity_points

    target = _store(store)
    path = target.check_outside(out)
    points = similarity_points(target, tau, p)
    wordnet_scatter(points, path, tau, p, gamma)
    n = len(points)
    typer.echo(f"{n} points -> {out}")
