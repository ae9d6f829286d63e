"""Names and WordNet ids can be set after ingest from a classes.json; logits stay as ingested."""

import json

from polysem.query import Store
from tests.helpers import assert_refused, snapshot


def test_names_and_wnids_are_set_after_ingest_and_logits_stay(cli, colour_store, tmp_path):
    store = Store(colour_store)
    before = store.reads.class_list().to_pylist()
    assert cli("wordnet", "--store", colour_store, "--wordnet-dir", "/usr/share/wordnet").exit_code == 0
    assert store.sql("SELECT count(*) AS n FROM class_similarity").column("n")[0].as_py() == 1  # green-red
    labels = tmp_path / "classes.json"
    labels.write_text(json.dumps({"green": {"name": "leaf green", "wnid": "n01443537"}, "blue": {"name": "sky"}}))
    result = cli("classes", "--set", labels, "--store", colour_store, "--format", "json")
    assert result.exit_code == 0, result.output
    after = {r["folder"]: r for r in json.loads(result.stdout)}
    assert after["green"]["name"] == "leaf green" and after["green"]["wnid"] == "n01443537"
    assert after["blue"]["name"] == "sky" and after["red"]["name"] == "red"
    assert [r["logit"] for r in before] == [after[r["folder"]]["logit"] for r in before]  # logits as ingested
    # green's wnid changed: its WordNet similarity is forgotten until `polysem wordnet` runs again
    assert store.sql("SELECT count(*) AS n FROM class_similarity").column("n")[0].as_py() == 0
    assert "2 classes changed" in result.stderr and "polysem wordnet" in result.stderr


def test_a_bad_classes_json_changes_nothing(cli, colour_store, tmp_path):
    labels = tmp_path / "classes.json"
    before = snapshot(colour_store)
    for content, fragment in [({"green": {"logit": 2}}, "logits stay as ingested"),
                              ({"purple": {"name": "x"}}, "'purple', which is no class folder"),
                              ({"green": {"wnid": "tree"}}, "not a WordNet noun id"),
                              ({"green": {"colour": "x"}}, "unknown field 'colour'")]:
        labels.write_text(json.dumps(content))
        assert_refused(cli("classes", "--set", labels, "--store", colour_store), fragment)
    assert_refused(cli("classes", "--set", tmp_path / "none.json", "--store", colour_store), "does not exist")
    assert snapshot(colour_store) == before
