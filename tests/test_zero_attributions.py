"""An ingest whose attributions are all zero says so in one line naming the likely cause, and so does a screening
of its store, where no threshold could help; one whose are not says nothing, and its empty screening names the
thresholds."""

from tests.helpers import TINY, make_image_folder


def test_a_zero_head_is_named_and_a_trained_one_is_not(cli, tmp_path):
    data = make_image_folder(tmp_path / "data", "train", {"a": 2, "b": 2, "c": 2})
    zero = cli("ingest", data, "--store", tmp_path / "zero", "--model", "tests.models:zero_head_net",
               "--layer", "probe", "--transform", "tests.models:small")
    assert zero.exit_code == 0, zero.output
    warnings = [line for line in zero.output.splitlines() if line.startswith("Warning: ")]
    assert warnings == [
        "Warning: all of the train images written have all-zero attributions at layer probe: the target logits "
        "do not depend on it (a classification head whose weights are zero, as torchvision's ViT starts with, "
        "untrained --weights, or a layer the logits do not read); check --weights and --layer"]
    honest = cli("ingest", data, "--store", tmp_path / "honest", *TINY)
    assert honest.exit_code == 0 and "Warning: " not in honest.output, honest.output
    screened = cli("screen", "--store", tmp_path / "zero")
    assert screened.exit_code == 0, screened.output
    assert ("every train image's attribution is zero at this layer, so no threshold can find one; the target logits "
            "do not depend on it") in " ".join(screened.output.split())
    strict = cli("screen", "--store", tmp_path / "honest", "--tau", 0.99, "--p", 0.99)
    assert strict.exit_code == 0 and "no channel is relevant for any class at tau 0.99, p 0.99: lower --tau or --p" \
        in " ".join(strict.output.split()), strict.output
