"""One serialiser: the terminal and files agree; `--out` writes --format, else the suffix's format, else refuses;
JSON is strict (NaN and infinities are null) everywhere."""

import json

import pyarrow.parquet as pq
import pytest

from polysem.query.serialise import out_format, to_json
from tests.helpers import assert_refused

NAN_QUERY = "SELECT 1 AS a, 'nan'::DOUBLE AS b, 'inf'::DOUBLE AS c, [1.5, 'nan'::DOUBLE] AS d"


@pytest.mark.parametrize("command", ["sql", "export"])
def test_out_writes_the_format_its_suffix_names(cli, colour_store, tmp_path, command):
    args = [NAN_QUERY] if command == "sql" else ["classes"]
    for suffix in ("json", "csv", "parquet"):
        out = tmp_path / f"result.{suffix}"
        result = cli(command, *args, "--out", out, "--store", colour_store)
        assert result.exit_code == 0, result.output
        if suffix == "json":
            json.loads(out.read_text())  # strict JSON: parses with the standard library
        elif suffix == "parquet":
            assert pq.read_table(out).num_rows >= 1
        else:
            assert out.read_text().splitlines()[0].startswith(("a,b", "class_id,"))


def test_json_is_strict_on_the_terminal_and_in_files(cli, colour_store, tmp_path):
    printed = cli("sql", NAN_QUERY, "--format", "json", "--store", colour_store)
    cli("sql", NAN_QUERY, "--out", tmp_path / "r.json", "--store", colour_store)
    expected = [{"a": 1, "b": None, "c": None, "d": [1.5, None]}]
    assert json.loads(printed.output) == expected == json.loads((tmp_path / "r.json").read_text())
    assert "NaN" not in printed.output and "Infinity" not in (tmp_path / "r.json").read_text()


def test_format_wins_over_the_suffix_and_an_unknown_suffix_is_refused(cli, colour_store, tmp_path):
    out = tmp_path / "result.txt"
    result = cli("sql", "SELECT 1 AS a", "--format", "csv", "--out", out, "--store", colour_store)
    assert result.exit_code == 0 and out.read_text() == "a\n1\n"
    assert_refused(cli("sql", "SELECT 1 AS a", "--out", tmp_path / "r.txt", "--store", colour_store),
                   "cannot tell the format", ".parquet, .csv or .json")
    assert_refused(cli("sql", "SELECT 1 AS a", "--format", "table", "--out", tmp_path / "r.json",
                       "--store", colour_store), "table")
    assert_refused(cli("export", "classes", "--out", tmp_path / "r.xlsx", "--store", colour_store),
                   "cannot tell the format")
    assert not (tmp_path / "r.txt").exists() and not (tmp_path / "r.xlsx").exists()


def test_out_format_rule():
    assert out_format("a.PARQUET") == "parquet" and out_format("a.txt", "json") == "json"
    with pytest.raises(Exception, match="cannot tell"):
        out_format("a")
    import pyarrow as pa

    assert json.loads(to_json(pa.table({"x": [float("nan"), 2.0]}))) == [{"x": None}, {"x": 2.0}]
