"""Commands that find polysemantic channels: screen, wordnet, plot wordnet."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from polysem.cli.app import (
    DEFAULT_STORE,
    FormatOption,
    LayerOption,
    POption,
    StoreOption,
    TauOption,
    _check_format,
    _store,
    as_flags,
    command,
    plot_app,
)
from polysem.cli.printing import print_warning, render_screening, render_similarity, render_wordnet_figure
from polysem.constants import GAMMA, TAU, P


@command()
def screen(
    *,
    tau: TauOption = TAU,
    p: POption = P,
    gamma: Annotated[float, typer.Option(help="Theorem 3.1: report pairs whose ARV cosine is below gamma.")] = GAMMA,
    concepts: Annotated[bool, typer.Option("--concepts", help="Per polysemantic channel: its relevant classes grouped into concepts (complete linkage at gamma), recorded in channel_concepts.")] = False,
    sweep: Annotated[bool, typer.Option("--sweep", help="Count the candidates over a grid of tau x p x gamma in one scan, to choose the settings.")] = False,
    fmt: FormatOption = "table",
    limit: Annotated[int | None, typer.Option(help="Show at most N pairs (lowest cosine first), or N channels with --concepts.")] = None,
    correct_only: Annotated[bool, typer.Option(help="Use only correctly classified train images.")] = False,
    layer: LayerOption = None,
    store: StoreOption = DEFAULT_STORE,
):
    """Polysemantic candidates: channels relevant for two classes with dissimilar ARVs, or (--concepts) their concepts."""
    _check_format(fmt)
    from polysem.method.concepts import screening

    found = screening(_store(store, layer=layer), tau=tau, p=p, gamma=gamma, by_concept=concepts, sweep=sweep, limit=limit,
                      correct_only=correct_only)
    render_screening(found, fmt)
    if found.why_empty is not None:  # an empty answer says why (on stderr: stdout stays the table or the JSON)
        typer.echo(as_flags(found.why_empty), err=True)
    if found.tau_warning is not None and fmt == "table":  # JSON and CSV stay the answer alone
        print_warning(as_flags(found.tau_warning))


@command()
def wordnet(
    tau: TauOption = TAU,
    p: POption = P,
    wordnet_dir: Annotated[Path | None, typer.Option(help="A WordNet 3.0 dict folder to use instead of nltk's data.")] = None,
    layer: LayerOption = None,
    store: StoreOption = DEFAULT_STORE,
):
    """WordNet path similarity of every class pair sharing a relevant channel, into class_similarity."""
    from polysem.method.wordnet import compute_class_similarity

    render_similarity(compute_class_similarity(_store(store, layer=layer), tau, p, wordnet_dir), tau, p)


@command(plot_app, name="wordnet")
def plot_wordnet(
    out: Annotated[str, typer.Option(metavar="FILE", help="Figure file to write (.png, .svg or .pdf).")] = "wordnet.png",
    tau: TauOption = TAU,
    p: POption = P,
    gamma: Annotated[float, typer.Option(help="Draw the gamma line here.")] = GAMMA,
    figure_format: Annotated[str | None, typer.Option(help="png, svg or pdf. [default: the --out suffix's, else png]")] = None,
    layer: LayerOption = None,
    store: StoreOption = DEFAULT_STORE,
):
    """Scatter of WordNet similarity over ARV cosine for all class pairs sharing a channel (supplement Fig. 4)."""
    from polysem.reporting import plot_wordnet as draw

    render_wordnet_figure(draw(_store(store, layer=layer), out, tau=tau, p=p, gamma=gamma, figure_format=figure_format))
