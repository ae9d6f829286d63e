"""`polysem layers`: the conv and Linear layers of a model and whether `ingest --layer` can take each, checked
against the model's own modules, with the reason for a layer it cannot take."""

import json

import torch
import torchvision

from polysem.ingest.models import model_layers
from tests.helpers import assert_refused
from tests.models import tiny_net


def test_the_layers_are_the_models_convs_and_linears_in_order_with_their_shapes():
    table = model_layers("tests.models:tiny_net", size=16).to_pylist()
    expected = [(name, list(m.weight.shape), list(m.stride) if isinstance(m, torch.nn.Conv2d) else None)
                for name, m in tiny_net().named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert [(r["layer"], r["weight_shape"], r["stride"]) for r in table] == expected
    convs = [r for r in table if r["type"] == "Conv2d"]
    assert len(convs) == 2 and all(r["takes"] and r["why_not"] is None for r in convs)
    (head,) = [r for r in table if r["type"] == "Linear"]  # on the pooled features: no position axis
    assert head["layer"] == "head.3" and not head["takes"] and "no token or position axis" in head["why_not"]


def test_a_grouped_conv_is_listed_with_why_it_cannot_be_taken():
    rows = {r["layer"]: r for r in model_layers("mobilenet_v3_small").to_pylist()}
    model = torchvision.models.mobilenet_v3_small()
    grouped = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and m.groups != 1}
    pooled = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}  # the classifier's
    assert grouped and {n for n, r in rows.items() if not r["takes"]} == grouped | pooled
    assert all("grouped conv" in rows[n]["why_not"] for n in grouped)
    assert all("no token or position axis" in rows[n]["why_not"] for n in pooled)


def test_the_command_prints_json_and_refuses_an_unknown_model(cli):
    shown = cli("layers", "--model", "resnet18", "--format", "json")
    assert shown.exit_code == 0, shown.output
    rows = json.loads(shown.output)
    assert rows[-2]["layer"] == "layer4.1.conv2" and rows[-2]["weight_shape"] == [512, 512, 3, 3]
    assert rows[-1]["layer"] == "fc" and not rows[-1]["takes"]
    assert_refused(cli("layers", "--model", "resnet5"), "unknown model 'resnet5'", "did you mean")


def test_a_model_that_does_not_run_on_the_probe_leaves_its_linears_unchecked_and_says_why(cli):
    """A grayscale model fails on the 3-channel probe: its Linears are neither taken nor refused (NULL), with the
    model's error and the fix; on its own input (1 channel) `mix`, over positions, is taken and `head` is not."""
    unchecked = {r["layer"]: r for r in model_layers("tests.models:gray_token_net", size=8).to_pylist()}
    assert unchecked["stem"]["takes"] is True  # a conv needs no forward pass
    for name in ("mix", "head"):
        assert unchecked[name]["takes"] is None
        assert "did not run on one 3 x 8 x 8 image (RuntimeError:" in unchecked[name]["why_not"]
        assert "1 channels" in unchecked[name]["why_not"]
        assert unchecked[name]["why_not"].endswith("give its input's `size` and `channels`")
    checked = {r["layer"]: r for r in model_layers("tests.models:gray_token_net", size=8, channels=1).to_pylist()}
    assert checked["mix"]["takes"] is True and checked["mix"]["why_not"] is None
    assert checked["head"]["takes"] is False and "no token or position axis" in checked["head"]["why_not"]
    shown = cli("layers", "--model", "tests.models:gray_token_net", "--size", 8, "--format", "json")
    assert shown.exit_code == 0
    assert [r["takes"] for r in json.loads(shown.stdout)] == [True, None, None]
    (warning,) = [line for line in shown.stderr.splitlines() if line.startswith("Warning:")]
    assert warning.startswith("Warning: 2 Linear layer(s) unchecked: the model did not run on one 3 x 8 x 8")
    assert " ".join(shown.stderr.split()).endswith("give its input's --size and --channels")
    assert_refused(cli("layers", "--model", "tests.models:gray_token_net", "--channels", 0), "--channels must be")
