"""Library messages name parameters; the command line names the flags that set them (polysem.cli.app.FLAGS)."""

import pytest

from polysem.errors import PolysemError


def test_api_names_the_parameter_and_cli_the_flag(cli, colour_store):
    import polysem

    with pytest.raises(PolysemError) as raised:
        polysem.screen(colour_store, tau=2)
    assert "tau" in str(raised.value) and "--tau" not in str(raised.value)
    result = cli("screen", "--tau", "2", "--store", colour_store)
    assert result.exit_code == 2
    assert "--tau must be in [0, 1], got 2" in result.output


def test_batch_size_named_once_per_face(colour_store):
    from polysem.cli.app import as_flags
    from polysem.method.runs import disentangle

    with pytest.raises(PolysemError, match="`batch_size` must be from 1 to 65536") as raised:
        disentangle(colour_store, 0, concept1=["green"], concept2=["red"], batch_size=0, progress=False)
    assert as_flags(str(raised.value)).startswith("--batch-size must be from 1 to 65536")


def test_as_flags_rewrites_only_known_parameters():
    from polysem.cli.app import FLAGS, as_flags

    assert as_flags("use `device`=cpu or pass `weights`=PATH; see `polysem runs`") == \
        "use --device cpu or pass --weights PATH; see `polysem runs`"
    assert as_flags("`concepts` and `take` and `channel_concepts`") == "--concept and --limit and `channel_concepts`"
    assert all(flag.startswith("--") or flag.isupper() for flag in FLAGS.values())
