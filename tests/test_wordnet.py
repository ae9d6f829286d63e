"""Where WordNet comes from: nltk's own data when installed, else Debian's dictionary files."""

import os
import subprocess
import sys

from tests.helpers import ROOT

PROBE = (
    "from polysem.method.wordnet import load_wordnet, synset\n"
    "with load_wordnet() as wn:\n"
    "    cat, tench = synset(wn, 'n02123045'), synset(wn, 'n01440764')\n"
    "    print(type(wn).__module__, cat.name(), sorted(cat.lemma_names())[0], cat.path_similarity(tench),"
    " cat.lexname(), sorted(len(path) for path in cat.hypernym_paths()))"
)


def probe(nltk_data, cache):
    env = {**os.environ, "NLTK_DATA": str(nltk_data), "POLYSEM_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.split(maxsplit=5)


def test_without_nltk_data_builds_from_debian_then_nltk_data_is_used(tmp_path):
    empty = tmp_path / "no-nltk-data"
    empty.mkdir()
    built = tmp_path / "cache"
    module, name, lemma, *answers = probe(empty, built)
    assert (name, lemma) == ("tabby.n.01", "tabby")  # WordNet 3.0 noun 02123045: tabby, tabby cat
    assert (built / "nltk_data" / "corpora" / "wordnet" / "lexnames").is_file()
    # a user who ran nltk.download('wordnet') has this layout under NLTK_DATA: nltk's loader is used, no cache built
    unused = tmp_path / "unused-cache"
    module, name, _, *nltk_answers = probe(built / "nltk_data", unused)
    assert module.startswith("nltk.corpus") and name == "tabby.n.01"
    assert answers == nltk_answers and answers[1] == "noun.animal"  # polysem's reader answers as nltk's own
    assert not unused.exists()


def test_a_built_copy_is_made_again_from_another_or_a_changed_folder(tmp_path, monkeypatch):
    """The copy under POLYSEM_CACHE serves the folder it was copied from: `wordnet_dir` naming another folder, or
    the same folder changed, is copied anew (a damaged first folder does not stay in use)."""
    from polysem.method.wordnet import DICT_FILES, load_wordnet

    monkeypatch.setenv("POLYSEM_CACHE", str(tmp_path / "cache"))
    copy = tmp_path / "cache" / "nltk_data" / "corpora" / "wordnet" / "data.noun"
    folders = {}
    for name in ("first", "second"):
        folders[name] = tmp_path / name
        folders[name].mkdir()
        for file in DICT_FILES:  # nltk builds a reader over empty dictionary files: it reads them when asked
            (folders[name] / file).write_text("")
        (folders[name] / "data.noun").write_text(f"  {name} folder\n")
    for name in ("first", "second", "first"):
        with load_wordnet(folders[name]):
            assert copy.read_text() == f"  {name} folder\n"
    (folders["first"] / "data.noun").write_text("  first folder, changed\n")
    with load_wordnet(folders["first"]):
        assert copy.read_text() == "  first folder, changed\n"
    built = copy.stat().st_ino
    with load_wordnet(copy.parent):  # the built copy itself, named as the folder: used as it is
        assert copy.stat().st_ino == built and copy.read_text() == "  first folder, changed\n"
