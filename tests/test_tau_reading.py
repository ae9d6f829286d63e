"""screen warns when tau is far from the paper's operating point for the layer's number of channels (tau x C
near 0.03 x 2048), and says nothing near it."""

import json

import pytest

from polysem.method.concepts import tau_reading


@pytest.mark.parametrize(("tau", "channels", "warned"), [
    (0.03, 2048, None),  # the paper's own point
    (0.005, 2048, None),  # 10.2 x 1/C: within a factor 10 of the paper's 61.4
    (0.002, 2048, "nearly every channel can pass it"),  # 4.1 x 1/C
    (0.03, 6, "nearly every channel can pass it"),  # below 1/C itself
    (0.5, 2048, "few channels can pass it"),  # 1024 x 1/C
])
def test_tau_is_read_against_the_mean_share_of_the_layer(tau, channels, warned):
    reading = tau_reading(tau, channels)
    if warned is None:
        assert reading is None
    else:
        assert warned in reading and f"of this layer's {channels} channels" in reading
        assert f"{tau * channels:.3g} times the mean share" in reading


def test_the_operating_point_is_named_only_where_a_tau_reaches_it():
    assert "tau near 0.12 is the paper's operating point here" in tau_reading(0.01, 512)
    assert "no tau reaches the paper's operating point with 6 channels" in tau_reading(0.03, 6)


def test_screen_prints_the_warning_under_the_table_only(cli, colour_store):
    table = cli("screen", "--store", colour_store)
    assert table.exit_code == 0
    warning = " ".join(table.output[table.output.index("Warning: "):].split())  # wrapped at 80 columns
    assert "this layer's 3 channels" in warning and "polysem screen --sweep" in warning
    assert all(len(line) <= 100 for line in table.output.splitlines())
    as_json = cli("screen", "--format", "json", "--store", colour_store)
    assert "Warning" not in as_json.output and json.loads(as_json.output)
