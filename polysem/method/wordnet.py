"""WordNet path similarity of class pairs (docs/method.md section 4, the supplement's Fig. 4).

Uses nltk's WordNet when installed (`nltk.download('wordnet')`). Otherwise it
builds nltk's layout, once, from a WordNet 3.0 dictionary folder (Debian's
`/usr/share/wordnet`) plus the `lexnames` file shipped with polysem.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from polysem.constants import SCREEN_SPLIT, TAU, P
from polysem.errors import PolysemError
from polysem.query.records import record_class_similarity
from polysem.query.screening import class_pairs_sharing_a_channel
from polysem.query.store import Store, as_store
from polysem.util.checks import check_path
from polysem.util.results import Result

__all__ = ["DEBIAN_WORDNET", "DICT_FILES", "SimilarityCounts", "cache_dir", "compute_class_similarity", "load_wordnet", "similarity_points", "synset"]

DEBIAN_WORDNET = Path("/usr/share/wordnet")
DICT_FILES = [f"{kind}.{pos}" for kind in ("data", "index") for pos in ("noun", "verb", "adj", "adv")] + [
    f"{pos}.exc" for pos in ("noun", "verb", "adj", "adv")
] + ["index.sense"]  # index.sense: Debian's wordnet-sense-index


# The reader of a built copy, kept for the process: building it reads the index files (2 to 3 s). Keyed by the
# copy's files, so a copy built again is read again.
_READERS: dict[tuple, Any] = {}
ORIGIN_FILE = "polysem-origin.json"  # in the built copy: the folder it was copied from


def _file_stat(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def cache_dir() -> Path:
    base = os.environ.get("POLYSEM_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "polysem")
    return Path(base).expanduser()


def _built_from(target: Path, origin: str) -> bool:
    """True when the built copy at `target` is whole and was copied from the source `origin` describes."""
    marker = target / ORIGIN_FILE
    return (all((target / name).is_file() for name in DICT_FILES + ["lexnames"]) and marker.is_file()
            and marker.read_text() == origin)


@contextmanager
def load_wordnet(wordnet_dir: str | os.PathLike | None = None):
    """An nltk WordNet reader for the block: from `wordnet_dir` when given, else nltk's own, else
    Debian's files. A built copy's folder joins nltk.data.path (nltk reads corpora only there)
    for the block alone."""
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    if wordnet_dir is None:
        try:
            from nltk.corpus import wordnet

            wordnet.ensure_loaded()
            yield wordnet
            return
        except LookupError:
            wordnet_dir = DEBIAN_WORDNET
    source = Path(wordnet_dir).expanduser()
    missing = [name for name in DICT_FILES if not (source / name).is_file()]
    if missing:
        raise PolysemError(
            f"WordNet not found: nltk has no wordnet and {source} lacks {', '.join(missing[:3])}; "
            "run python -c \"import nltk; nltk.download('wordnet')\" or install Debian's wordnet-base "
            "(or pass `wordnet_dir` with a WordNet 3.0 dict folder)"
        )
    target = cache_dir() / "nltk_data" / "corpora" / "wordnet"
    # the copy names its source and the source files' sizes and times: another folder, or one changed, is copied anew
    origin = json.dumps({"source": str(source.resolve()),
                         "files": {name: list(_file_stat(source / name)[1:]) for name in DICT_FILES}}, sort_keys=True)
    if source.resolve() != target.resolve():  # the built copy named as the source is used as it is
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target.with_name("wordnet.lock"), "a") as lock:  # one process builds at a time
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not _built_from(target, origin):
                staging = target.with_name(f"wordnet.partial-{os.getpid()}")
                shutil.rmtree(staging, ignore_errors=True)
                staging.mkdir()
                for name in DICT_FILES:  # nltk refuses symlinks that leave its corpus root, so copy
                    shutil.copyfile(source / name, staging / name)
                (staging / "lexnames").write_text(
                    resources.files("polysem").joinpath("data/wordnet-lexnames").read_text())
                (staging / ORIGIN_FILE).write_text(origin)
                shutil.rmtree(target, ignore_errors=True)
                staging.rename(target)
    import nltk

    saved = list(nltk.data.path)
    nltk.data.path.insert(0, str(target.parents[1]))
    try:
        key = (str(target.resolve()), tuple(_file_stat(target / name) for name in DICT_FILES + ["lexnames"]))
        reader = _READERS.get(key)
        if reader is None:
            with warnings.catch_warnings():  # nltk warns that the Open Multilingual Wordnet is absent: not used here
                warnings.simplefilter("ignore", UserWarning)
                reader = english_reader(WordNetCorpusReader, str(target))
            _READERS.clear()  # one built copy's reader at a time
            _READERS[key] = reader
        yield reader
    finally:
        nltk.data.path[:] = saved


def english_reader(reader_class, root: str):
    """nltk's WordNet reader of `root` without the Open Multilingual Wordnet: nltk's constructor also maps every
    sense of its `wordnet` corpus onto the reader's (about 1 s of the 2 s it takes), a map only OMW lookups read."""

    class EnglishWordNet(reader_class):
        def map_wn(self, version="wordnet"):
            return None

    return EnglishWordNet(root, None)


def synset(wordnet, wnid: str):
    """The noun synset of a WordNet id like n01440764 (`n` + the 8-digit noun offset)."""
    with warnings.catch_warnings():  # nltk warns, then returns None, for an offset it lacks: the caller names it
        warnings.simplefilter("ignore", UserWarning)
        return wordnet.synset_from_pos_and_offset("n", int(wnid[1:]))


def similarity_points(store: Store, tau: float = TAU, p: float = P) -> list[tuple[float, float, int, int]]:
    """(ARV cosine, WordNet path similarity) of every class pair sharing a relevant channel, once per
    channel: the points of the supplement's Fig. 4. Refuses when `polysem wordnet` has not run."""
    from polysem.query.screening import check_thresholds, require_counted_once

    check_thresholds(tau, p)
    require_counted_once(store, SCREEN_SPLIT)
    rows = store.reads.wordnet_points(tau=tau, p=p).to_pylist()
    if not rows:
        raise PolysemError("no WordNet similarities in the store for these pairs; run `polysem wordnet` first")
    return [(r["cosine"], r["path_similarity"], r["class1"], r["class2"]) for r in rows]


@dataclass(frozen=True)
class SimilarityCounts(Result):
    """What `compute_class_similarity` recorded.

    Args (fields):
        pairs: the class pairs scored into `class_similarity` (0: no two classes share a relevant channel).
        skipped_without_wnid: the class pairs passed over because a class has no WordNet id.
    """

    pairs: int
    skipped_without_wnid: int


def compute_class_similarity(store: Store | str | os.PathLike, tau: float = TAU, p: float = P,
                             wordnet_dir: str | os.PathLike | None = None) -> SimilarityCounts:
    """`polysem wordnet`: fill `class_similarity` with the WordNet path similarity of every class pair sharing
    a relevant channel.

    Args:
        store: the store, or its folder.
        tau, p: Ineq. 2's relevance threshold and fraction that decide which channels a class pair shares.
        wordnet_dir: a WordNet 3.0 dict folder to use instead of nltk's data.

    Returns:
        `SimilarityCounts`: the pairs scored and those skipped for a missing wnid.
    """
    store = as_store(store)
    check_path("wordnet_dir", wordnet_dir, none=True)
    pairs = class_pairs_sharing_a_channel(store, tau, p).to_pylist()
    with_ids = [row for row in pairs if row["wnid1"] and row["wnid2"]]
    if pairs and not with_ids:
        raise PolysemError(
            "the store's classes have no WordNet ids; name the class folders by wnid (n01440764) or give "
            "each folder a wnid in DATA_DIR/classes.json before ingesting"
        )
    if not pairs:  # nothing to score: WordNet is not even loaded
        return SimilarityCounts(0, 0)
    rows = []
    with load_wordnet(wordnet_dir) as wordnet:
        for row in with_ids:
            try:
                similarity = synset(wordnet, row["wnid1"]).path_similarity(synset(wordnet, row["wnid2"]))
            except Exception as error:  # nltk raises WordNetError or ValueError for unknown offsets
                source = f"the WordNet of {wordnet_dir}" if wordnet_dir is not None else "WordNet"
                raise PolysemError(f"{source} has no noun {row['wnid1']} or {row['wnid2']} ({error}); check the "
                                   "classes' wnids, and that the WordNet folder holds WordNet 3.0 whole") from error
            rows.append({"class1": row["class1"], "class2": row["class2"], "path_similarity": similarity})
    with store.transaction() as tx:
        record_class_similarity(tx, rows)
    return SimilarityCounts(len(rows), len(pairs) - len(with_ids))
