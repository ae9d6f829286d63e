"""No table cuts a column or a number at 80 columns: names wrap, ids and numbers stay whole, and a table whose
ids and numbers alone do not fit turns vertical (one record per block); JSON stays the data."""

import json
import re

import pyarrow as pa

from polysem.cli import printing


def test_a_summary_keeps_every_number_whole_at_80_columns(capsys):
    rows = [["0123456789", "3", "a name long enough to need more than one line at eighty columns, surely", "0.967",
             "1.00", "0.93/0.88"]]
    headers = [("run", "id"), ("channel", "id"), ("concepts", "name"), ("min cosine", "number"), ("rho", "number"),
               ("c_j -> c'_j", "number")]
    printing._print_summary("runs", headers, rows, 1)
    out = capsys.readouterr().out
    assert all(len(line) <= 80 for line in out.splitlines()), out
    assert "…" not in out
    for whole in ("0123456789", "0.967", "1.00", "0.93/0.88", "min cosine", "c_j -> c'_j"):
        assert whole in out, whole


def test_a_table_too_wide_for_its_numbers_turns_vertical(capsys):
    headers = [(f"number {i}", "number") for i in range(8)] + [("name", "name")]
    rows = [[f"{1000 + i}.123456" for i in range(8)] + ["a class"]]
    printing._print_summary("wide", headers, rows, 1)
    out = capsys.readouterr().out
    assert all(len(line) <= 80 for line in out.splitlines()), out
    assert re.search(r"^number 7\s+1007\.123456$", out, re.MULTILINE), out  # one record per block, whole
    assert "…" not in out


def test_the_generic_table_never_cuts_and_json_is_unchanged(capsys):
    table = pa.table({f"column {i}": [1234567.891 + i] for i in range(10)})
    printing.render(table, "table")
    out = capsys.readouterr().out
    assert all(len(line) <= 80 for line in out.splitlines()) and "…" not in out
    assert "1.235e+06" in out  # the cell as _cell writes it, whole
    printing.render(table, "json")
    assert json.loads(capsys.readouterr().out) == table.to_pylist()
