"""What a person reads: `screen`, `runs` and `evaluate` fit 100 columns, ids whole, names next to ids."""

import json

import pytest

from polysem.query import Store

WIDTH = 80


def lines_fit(output: str) -> bool:
    return all(len(line) <= WIDTH for line in output.splitlines())


@pytest.fixture
def run_id(cli, colour_store):
    result = cli("disentangle", "--channel", 0, "--concept1", "green", "--concept2", "red", "--store", colour_store,
                 "--format", "json")
    assert result.exit_code == 0, result.output
    run_id = json.loads(result.stdout)["run_id"]
    assert cli("evaluate", run_id, "--store", colour_store).exit_code == 0
    return run_id


def test_screen_fits_and_names_classes(cli, colour_store):
    result = cli("screen", "--store", colour_store)
    assert result.exit_code == 0, result.output
    assert lines_fit(result.output), result.output
    names = Store(colour_store).sql("SELECT class_id, name FROM classes").to_pylist()
    shown = [n for n in names if f"{n['class_id']} {n['name'][:5]}" in result.output]
    assert len(shown) >= 2, result.output
    full = json.loads(cli("screen", "--store", colour_store, "--format", "json").output)
    assert {"channel", "class1", "class2", "cosine", "fraction1", "fraction2", "name1", "name2",
            "wordnet_similarity"} == set(full[0])


def test_long_class_names_wrap_and_ids_and_numbers_stay_whole(cli, colour_store, monkeypatch):
    from polysem.cli import printing as output

    long = "a class name far longer than any terminal column should ever have to hold, really"
    real = Store.run

    def with_long_names(self, name, **params):
        import pyarrow as pa

        table = real(self, name, **params)  # a table, or one row or value (a block marked '^' or '$')
        for column in ("name1", "name2"):
            if isinstance(table, pa.Table) and column in table.column_names:
                table = table.set_column(table.column_names.index(column), column, pa.array([long] * table.num_rows))
        return table

    monkeypatch.setattr(Store, "run", with_long_names)
    result = cli("screen", "--store", colour_store)
    assert result.exit_code == 0 and lines_fit(result.output), result.output
    assert "…" not in result.output and output.NARROW == WIDTH
    words = result.output.split()
    assert all(word in words for word in long.split()) and "0.044" in words  # every word of the name, the cosine


def test_runs_list_record_and_evaluate(cli, colour_store, run_id):
    listed = cli("runs", "--store", colour_store)
    assert listed.exit_code == 0 and lines_fit(listed.output), listed.output
    assert run_id in listed.output
    names = {r["class_id"]: r["name"] for r in Store(colour_store).sql("SELECT * FROM classes").to_pylist()}
    assert f"1 {names[1]}"[:12] in listed.output
    record = cli("runs", run_id, "--store", colour_store)
    assert record.exit_code == 0, record.output
    for field in ("run_id", "group_id", "concepts", "sources", "shared", "max_logit_diff", "artifact", "parameters",
                  "polysem_version", "fractions", "warnings"):
        assert any(line.startswith(field) for line in record.output.splitlines()), field
    full = json.loads(cli("runs", run_id, "--store", colour_store, "--format", "json").stdout)
    assert full[0]["run_id"] == run_id and "parameters" in full[0] and "fractions" in full[0]
    assert "run_id" in cli("runs", "--store", colour_store, "--format", "csv").stdout.splitlines()[0]
    missing = cli("runs", "nope", "--store", colour_store)
    assert missing.exit_code == 2 and "unknown run id 'nope'" in missing.output
    evaluated = cli("evaluate", run_id, "--store", colour_store)
    assert evaluated.exit_code == 0 and names[1][:8] in evaluated.output and names[2][:8] in evaluated.output
    assert lines_fit(evaluated.output), evaluated.output


def test_fractions_outside_zero_one_are_explained_where_shown(capsys):
    from polysem.cli.printing import render_evaluation
    from polysem.method.evaluation import ConceptEvaluation, Evaluation, TopClasses
    from polysem.util.readings import FRACTIONS_NOTE

    def evaluation(*concepts):
        return Evaluation("run", 0.03, "ineq2", [[1], [2]], [ConceptEvaluation(3, f, r, False) for f, r in concepts],
                          TopClasses("val", 100, 6, {}))

    render_evaluation(evaluation(([0.9, 0.1], 0.0), ([0.2, 0.8], 0.0)), "table", {1: "a", 2: "b"})
    assert "note:" not in capsys.readouterr().out
    render_evaluation(evaluation(([2.515, -0.103], 1.4), ([0.2, 0.8], 0.0)), "table", {1: "a", 2: "b"})
    shown = capsys.readouterr().out
    assert "2.515" in shown and f"note: {FRACTIONS_NOTE}" in " ".join(shown.split()) and lines_fit(shown)
    assert "1 a" in shown and "run run: fraction of the original activation" in shown


def test_an_unbounded_selectivity_reads_the_same_in_the_table_and_json(capsys):
    from polysem.cli.printing import render_visualization
    from polysem.method.visualize import UnitImage, Visualization
    from polysem.util.readings import UNBOUNDED, selectivity_reading

    def unit(name, activation, selectivity):
        return UnitImage(activation, {}, selectivity, selectivity_reading(name, selectivity), "maco", 8, 8, 0, "cpu",
                         0.5, False, None, False, f"a/{name}.png")

    result = Visualization({"original": unit("original", 5.0, None), "c1": unit("c1", 3.0, None),
                            "c2": unit("c2", 2.0, 4.0)})
    render_visualization(result, "table", "title")
    shown = capsys.readouterr().out
    assert lines_fit(shown) and "unbounded" in shown and f"selectivity {UNBOUNDED}" in " ".join(shown.split())
    assert selectivity_reading("c1", None) == UNBOUNDED and "not defined" in selectivity_reading("r", None)
    render_visualization(result, "json", "title")
    assert json.loads(capsys.readouterr().out)["c1"]["selectivity_reading"] == UNBOUNDED


def test_figures_as_svg_and_pdf_and_the_wordnet_legend_counts_distinct_pairs(tmp_path):
    from polysem.figures.plots import wordnet_scatter

    # three (channel, pair) points of two distinct class pairs
    points = [(0.1, 0.2, 1, 2), (0.3, 0.2, 1, 2), (0.4, 0.5, 3, 4)]
    svg = wordnet_scatter(points, tmp_path / "w.svg")
    text = svg.read_text()
    assert svg.suffix == ".svg" and text.lstrip().startswith("<?xml") and "3 points" in text
    assert "2 distinct class pairs" in text
    pdf = wordnet_scatter(points, tmp_path / "w.pdf", figure_format="pdf")
    assert pdf == tmp_path / "w.pdf" and pdf.read_bytes().startswith(b"%PDF")
    (tmp_path / "w.png").write_text("the user's")
    with pytest.raises(ValueError, match="does not end in .pdf"):  # never a sibling file with another suffix
        wordnet_scatter(points, tmp_path / "w.png", figure_format="pdf")
    assert (tmp_path / "w.png").read_text() == "the user's"
    again = wordnet_scatter(points, tmp_path / "again.svg")
    assert again.read_bytes() == svg.read_bytes()  # no date in the file: the same figure, the same bytes


def test_feature_visualisation_captions_fit_their_figure(tmp_path, monkeypatch):
    """Every caption of the visualisation figure lies inside the figure (a cut caption hid c2's and r's numbers)."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from polysem.figures import plots

    figures = []
    monkeypatch.setattr(plots, "save", lambda figure, out, figure_format=None: figures.append(figure) or out)
    units = ["original", "c1", "c2", "c3", "r"]
    rows = [{"unit": u, "seed": s, "method": "maco", "steps": 512, "size": 224, "image": f"{u}-{s}.png",
             "act_original": 1234.5678, "act_r": -98.7654, "act_concepts": [262.125, 17.5, -3.25],
             "selectivity": None if u == "c2" else 14.9876, "failure": None} for u in units for s in (0, 1)]
    images = {r["image"]: np.zeros((8, 8, 3), dtype=np.uint8) for r in rows}
    labels = {u: f"{u} (concept: a very long class name + another very long class name)" for u in units}
    plots.visualizations({"run_id": "abcdef0123"}, rows, images, labels, tmp_path / "v.png")
    figure = figures[0]
    FigureCanvasAgg(figure)
    figure.canvas.draw()  # as saving does: the layout is made when the figure is drawn
    renderer = figure.canvas.get_renderer()
    box = figure.bbox
    texts = [t for t in figure.findobj(lambda a: hasattr(a, "get_text")) if t.get_text()]
    assert any("r -98.8" in t.get_text() for t in texts)  # the last unit's number is drawn
    for text in texts:
        extent = text.get_window_extent(renderer)
        assert extent.x0 >= box.x0 - 1 and extent.x1 <= box.x1 + 1 and extent.y0 >= box.y0 - 1 and \
            extent.y1 <= box.y1 + 1, text.get_text()
