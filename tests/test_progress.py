"""Progress in a Jupyter kernel without ipywidgets: a plain text line, no warning (rich would warn at every
bar); in a terminal, rich's bar."""

import warnings

from rich.console import Console

from polysem.util import progress


def test_a_notebook_without_widgets_gets_a_text_line_and_no_warning(monkeypatch, capsys):
    monkeypatch.setattr(progress, "_widgets_missing", lambda console: True)  # a kernel without ipywidgets
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rich's "install ipywidgets" would fail the test
        with progress.progress_bar("ingest train", 10) as advance:
            for _ in range(10):
                advance(1)
    err = capsys.readouterr().err
    assert err.endswith("\n") and "ingest train 10/10" in err.split("\r")[-1]
    assert "ipywidgets" not in err


def test_the_real_check_sees_no_widgets_here():
    """This environment has no ipywidgets: the check answers from the import, not from a guess."""
    import importlib.util

    class Jupyter:
        is_jupyter = True

    assert progress._widgets_missing(Jupyter()) == (importlib.util.find_spec("ipywidgets") is None)
    assert not progress._widgets_missing(Console(stderr=True))  # not a notebook
