"""screen warns when tau is far from the paper's setting for the layer's number of channels (tau x C near 0.03 x
2048), with how many (channel, class) pairs the data lets through, and says nothing near it."""

import json

import pytest

from polysem.method.concepts import tau_reading


@pytest.mark.parametrize(("tau", "channels", "warned"), [
    (0.03, 2048, None),  # the paper's own point
    (0.005, 2048, None),  # 10.2 x 1/C: within a factor 10 of the paper's 61.4
    (0.002, 2048, "a bar 15 times lower than the paper's"),  # 4.1 x 1/C
    (0.03, 6, "a bar 341 times lower than the paper's"),  # below 1/C itself
    (0.5, 2048, "a bar 16.7 times higher than the paper's"),  # 1024 x 1/C
    (0, 2048, "no bar at all (every share of 0 or more passes)"),
])
def test_tau_is_read_against_the_mean_share_of_the_layer(tau, channels, warned):
    reading = tau_reading(tau, channels)
    if warned is None:
        assert reading is None
    else:
        assert warned in reading and f"of this layer's {channels} channels" in reading
        assert f"{tau * channels:.3g} times the mean share" in reading


def test_the_warning_states_how_many_pairs_the_data_lets_through_not_a_tau_to_take(cli, colour_store):
    """A tau scaled by 1/C alone (0.03 x 2048 / 3 is above 1 here) would be advice the data can refute: the
    warning names no such tau, and says how many pairs the store's screening finds relevant, counted here by
    brute force over the store's rows (Ineq. 2: share >= tau on at least p of a class's images)."""
    from polysem.query import Store

    shown = cli("screen", "--store", colour_store)
    warning = " ".join(shown.output[shown.output.index("Warning: "):].split())
    rows = Store(colour_store).sql("SELECT target, attribution FROM samples WHERE split = 'train'").to_pylist()
    channels = len(rows[0]["attribution"])
    classes = sorted({r["target"] for r in rows})
    relevant = 0
    for channel in range(channels):
        for target in classes:
            mine = [r["attribution"] for r in rows if r["target"] == target]
            shares = [max(a[channel], 0) / s if (s := sum(max(x, 0) for x in a)) > 0 else 0 for a in mine]
            relevant += sum(share >= 0.03 for share in shares) >= 0.75 * len(mine)
    total = channels * len(classes)  # the classes with train images: an ingest of some classes counts those only
    assert f"here {relevant} of the {total} (channel, class) pairs are relevant at it (Ineq. 2)" in warning
    assert "operating point" not in warning and "tau near" not in warning


def test_screen_prints_the_warning_under_the_table_only(cli, colour_store):
    table = cli("screen", "--store", colour_store)
    assert table.exit_code == 0
    warning = " ".join(table.output[table.output.index("Warning: "):].split())  # wrapped at 80 columns
    assert "this layer's 3 channels" in warning and "polysem screen --sweep" in warning
    assert all(len(line) <= 100 for line in table.output.splitlines())
    as_json = cli("screen", "--format", "json", "--store", colour_store)
    assert "Warning" not in as_json.output and json.loads(as_json.output)


def test_the_pairs_counted_are_those_of_the_classes_the_store_holds_images_of(cli, fixture_store, tmp_path):
    images = fixture_store("colour").images
    store = tmp_path / "two"
    made = cli("ingest", images, "--store", store, "--model", "tests.models:colour_net", "--layer", "probe",
               "--transform", "tests.models:to_tensor", "--classes", "0,1")
    assert made.exit_code == 0, made.output
    shown = cli("screen", "--store", store)
    warning = " ".join(shown.output[shown.output.index("Warning: "):].split())
    assert "of the 6 (channel, class) pairs" in warning  # 3 channels x the 2 classes ingested, of the store's 3
