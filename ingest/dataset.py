"""Image folders: listing a split, class metadata, stable image ids, robust loading."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from torchvision.datasets import ImageFolder

from polysem.errors import DataError
from polysem.util.images import ImageRecord, file_kind

__all__ = ["CLASS_FILE", "WNID", "SplitListing", "check_split_name", "class_rows", "image_id", "imagenet_index", "list_split", "read_class_file",
           "read_class_json", "relabel_classes"]

WNID = re.compile(r"^n\d{8}$")
CLASS_FILE = "classes.json"  # optional, in DATA_DIR: {"folder": {"name": ..., "wnid": ..., "logit": ...}}


@dataclass
class SplitListing:
    """A split as ingest lists it: its folder (or, for a Dataset, the root the store records for it:
    `dataset:<type> of N items`), its class names in class id order, and one record per image or item."""

    root: Path | str
    folders: list[str]
    records: list[ImageRecord]
    dataset: Any = None  # the map-style Dataset of a split made from one (ingest/objects.py); None: a folder


def image_id(split: str, relative_path: str) -> int:
    """A stable 63-bit id from the split and the path relative to the split folder."""
    digest = hashlib.blake2b(f"{split}/{relative_path}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def check_split_name(split: str) -> None:
    """A split is one folder name under DATA_DIR; anything else could write outside the store."""
    if not split or split in (".", "..") or "/" in split or "\\" in split or "\0" in split or Path(split).is_absolute():
        raise DataError(f"bad `split` '{split}': give the name of one folder under DATA_DIR, e.g. train or val")


def list_split(data_dir: str | os.PathLike[str], split: str, classes: list[int] | None = None, limit: int | None = None) -> SplitListing:
    """The images of DATA_DIR/SPLIT as an ImageFolder sees them (sorted class folders)."""
    check_split_name(split)
    data_dir = Path(data_dir).expanduser().absolute()
    if not data_dir.is_dir():
        what = "is not a folder" if data_dir.exists() else "does not exist"
        raise DataError(f"data folder {data_dir} {what}; pass the folder that holds the split folders")
    root = data_dir / split
    if not root.is_dir():
        present = sorted(p.name for p in data_dir.iterdir() if p.is_dir())
        hint = f" (it has: {', '.join(present[:6])})" if present else " (it is empty)"
        raise DataError(f"split folder {root} does not exist{hint}; pass `split` with one of them")
    _refuse_looping_links(root)
    try:
        folder = ImageFolder(str(root), allow_empty=True)
    except FileNotFoundError as error:
        raise DataError(f"{root} has no class folders; lay it out as {root}/<class>/<image>") from error
    folders = list(folder.classes)
    for name in folders:
        _require_utf8(name, root)
    wanted = None
    if classes is not None:
        if not classes:
            raise DataError("`classes` is empty; give class ids separated by commas, e.g. 0,5,17")
        bad = [c for c in classes if not 0 <= c < len(folders)]
        if bad:
            raise DataError(f"class ids {bad} are out of range; {root} has classes 0..{len(folders) - 1}")
        wanted = set(classes)
    records: list[ImageRecord] = []
    per_class: dict[int, int] = {}
    for path, target in folder.samples:
        if wanted is not None and target not in wanted:
            continue
        if limit is not None and per_class.get(target, 0) >= limit:
            continue
        per_class[target] = per_class.get(target, 0) + 1
        relative = Path(path).relative_to(root).as_posix()
        _require_utf8(relative, root)
        _refuse_leaving_link(Path(path), root / folders[target], data_dir)
        records.append(ImageRecord(image_id(split, relative), path, target))
    if not folder.samples:
        raise DataError(f"split {root} holds no images; put images in its class folders")
    return SplitListing(root, folders, records)


def _require_utf8(relative: str, root: Path) -> None:
    try:
        relative.encode("utf-8")
    except UnicodeEncodeError:
        shown = relative.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        raise DataError(f"file name {root / shown!s} is not valid UTF-8; rename it (the store keeps paths as text)") from None


def _refuse_looping_links(root: Path) -> None:
    """ImageFolder follows directory symlinks; one that leads back up (or into another class) would
    store images under the wrong class, or loop. Refuse before anything is listed."""
    root_real = root.resolve()
    for class_dir in root.iterdir():
        if not class_dir.is_dir():
            continue
        class_real = class_dir.resolve()
        for current, dirs, _ in os.walk(class_dir, followlinks=False):
            for name in dirs:
                link = Path(current) / name
                if not link.is_symlink():
                    continue
                target = link.resolve()
                here = Path(current).resolve()
                if target == here or target in here.parents or (target.is_relative_to(root_real)
                                                                  and not target.is_relative_to(class_real)):
                    raise DataError(f"{link} links to {target}, which holds it or another class's images; "
                                    "remove the link or point it at a folder of this class only")


def _refuse_leaving_link(path: Path, class_dir: Path, data_dir: Path) -> None:
    """A file link must lead to a file of its own class: inside the class folder (as it really is, when the
    class folder is itself a link) or inside the folder the link sits in. A link into another class would
    store the image under two classes; one out of DATA_DIR reads any file on the machine (/etc/passwd).
    Refused before anything is written, like a directory link into another class."""
    if not path.is_symlink():
        return
    try:
        target = path.resolve()
        allowed = (class_dir.resolve(), path.parent.resolve())
    except (OSError, RuntimeError):  # a loop of links
        raise DataError(f"{path} is a link that never ends (a loop of links); remove it") from None
    if any(target.is_relative_to(folder) for folder in allowed):
        return
    if target.is_relative_to(class_dir.parent.resolve()):
        where = "in another class (the image would be stored under two classes)"
    elif target.is_relative_to(data_dir.resolve()):
        where = "outside its class folder"
    else:
        where = "outside DATA_DIR"
    raise DataError(f"{path} links to {target}, {where}; an image link must lead to a file in its own class folder: "
                    "copy the image there, or remove the link")


@lru_cache(maxsize=1)
def imagenet_index() -> dict[str, tuple[int, str]]:
    """WordNet id -> (ImageNet-1k logit index, readable class name)."""
    text = resources.files("polysem").joinpath("data/imagenet_class_index.json").read_text()
    return {wnid: (int(index), name) for index, (wnid, name) in json.loads(text).items()}


def read_class_file(data_dir: str | os.PathLike[str]) -> dict[str, dict]:
    """DATA_DIR/classes.json, checked: {"folder": {"name": str, "wnid": str, "logit": int}, ...}, all keys optional."""
    path = Path(data_dir) / CLASS_FILE
    if not path.exists():
        return {}
    return read_class_json(path)


def read_class_json(path: Path) -> dict[str, dict]:
    """A classes.json file, checked like DATA_DIR/classes.json."""
    if not path.exists():
        raise DataError(f"{path} does not exist; give the path of a classes.json file")
    kind = file_kind(path.stat().st_mode)
    if kind is not None:  # a FIFO would block the read
        raise DataError(f"{path} is not a regular file ({kind}); replace it by a JSON file or remove it")
    fix = 'write it as {"folder": {"name": "...", "wnid": "n01440764", "logit": 0}, ...}'
    try:
        # utf-8-sig: a leading byte order mark (Notepad and Excel write one) is not JSON, so it is dropped
        extra = json.loads(path.read_bytes().decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{path} is not valid UTF-8 JSON ({type(error).__name__}); {fix}") from None
    if not isinstance(extra, dict):
        raise DataError(f"{path} holds a {type(extra).__name__}, not an object; {fix}")
    for folder, info in extra.items():
        if not isinstance(info, dict):
            raise DataError(f"{path}: the entry of '{folder}' is a {type(info).__name__}, not an object; {fix}")
        unknown = sorted(set(info) - {"name", "wnid", "logit"})
        if unknown:
            raise DataError(f"{path}: the entry of '{folder}' has unknown field '{unknown[0]}' (the fields are name, "
                            f"wnid and logit); {fix}")
        for key in ("name", "wnid"):
            if key in info and not isinstance(info[key], str):
                raise DataError(f"{path}: '{folder}' {key} must be a string; {fix}")
        if "wnid" in info and not WNID.match(info["wnid"]):
            raise DataError(f"{path}: '{folder}' wnid '{info['wnid']}' is not a WordNet noun id like n01440764")
        if "logit" in info and (isinstance(info["logit"], bool) or not isinstance(info["logit"], int)):
            raise DataError(f"{path}: '{folder}' logit must be an integer output index of the model; {fix}")
    return extra


def class_rows(data_dir: str | os.PathLike[str], folders: list[str], n_outputs: int, model_name: str = "the model") -> list[dict]:
    """Rows of the `classes` table: class_id, folder, name, wnid, logit.

    logit, the model output of the class, by the first rule that applies: `logit` in
    DATA_DIR/classes.json; a WordNet-id folder with a 1000-output model gets its ImageNet-1k
    index; otherwise the folder index, only when the model has one output per class folder.
    Anything else is refused, naming the fix.
    """
    extra = read_class_file(data_dir)
    unknown = [key for key in extra if key not in folders]
    if unknown:
        raise DataError(f"{Path(data_dir) / CLASS_FILE} names '{unknown[0]}', which is no class folder of the split "
                        f"(it has: {', '.join(folders[:6])}{', ...' if len(folders) > 6 else ''}); fix or remove that "
                        "entry")
    index = imagenet_index()
    rows, unmapped = [], []
    for class_id, folder in enumerate(folders):
        info = extra.get(folder, {})
        wnid = info.get("wnid") or (folder if WNID.match(folder) else None)
        name = info.get("name") or (index[folder][1] if folder in index else folder)
        if "logit" in info:
            logit = info["logit"]
        elif n_outputs == 1000 and folder in index:
            logit = index[folder][0]
        elif n_outputs == len(folders):
            logit = class_id
        else:
            logit = None
            unmapped.append(folder)
        rows.append({"class_id": class_id, "folder": folder, "name": name, "wnid": wnid, "logit": logit})
    if unmapped:
        what = "are not ImageNet-1k wnids" if n_outputs == 1000 else "have no logit"
        raise DataError(
            f"{model_name} has {n_outputs} outputs but {Path(data_dir)} has {len(folders)} class folders, "
            f"{len(unmapped)} of which {what} (first: '{unmapped[0]}'); give each folder its \"logit\" in "
            f"{Path(data_dir) / CLASS_FILE}, or use a model with {len(folders)} outputs"
        )
    out_of_range = [r for r in rows if not 0 <= r["logit"] < n_outputs]
    if out_of_range:
        row = out_of_range[0]
        raise DataError(f"class '{row['folder']}' has logit {row['logit']}, but {model_name} has outputs "
                        f"0..{n_outputs - 1}; fix its \"logit\" in {Path(data_dir) / CLASS_FILE}")
    seen: dict[int, str] = {}
    for row in rows:
        if row["logit"] in seen:
            raise DataError(f"classes '{seen[row['logit']]}' and '{row['folder']}' both map to logit {row['logit']}; "
                            f"give each folder its own \"logit\" in {Path(data_dir) / CLASS_FILE}")
        seen[row["logit"]] = row["folder"]
    return rows


def relabel_classes(store, class_file: str | os.PathLike[str]) -> list[dict]:
    """Set class names and WordNet ids after ingest from a classes.json ({"folder": {"name", "wnid"}}); the
    logits stay as ingested (a different one is refused). Returns the classes that changed. WordNet
    similarities of classes whose wnid changed are forgotten (run `polysem wordnet` again)."""
    import pyarrow as pa

    from polysem.query import layout
    from polysem.query.store import as_store
    from polysem.util import atomic

    store = as_store(store)
    store.meta(any_layer=True)
    path = Path(class_file)
    entries = read_class_json(path)
    rows = store.reads.class_list().to_pylist()
    folders = [row["folder"] for row in rows]
    unknown = [key for key in entries if key not in folders]
    if unknown:
        raise DataError(f"{path} names '{unknown[0]}', which is no class folder of the store (it has: "
                        f"{', '.join(folders[:6])}{', ...' if len(folders) > 6 else ''}); fix or remove that entry")
    changed, rewired = [], []
    for row in rows:
        info = entries.get(row["folder"], {})
        if "logit" in info and info["logit"] != row["logit"]:
            raise DataError(f"{path}: '{row['folder']}' has logit {info['logit']}, but the store attributed it to "
                            f"logit {row['logit']}; logits stay as ingested: drop the logit, or ingest into a new "
                            "store")
        new = {**row, "name": info.get("name", row["name"]), "wnid": info.get("wnid", row["wnid"])}
        if new != row:
            changed.append(new)
            if new["wnid"] != row["wnid"]:
                rewired.append(row["class_id"])
        row.update(new)
    if not changed:
        return []
    with store.transaction() as tx:  # first the similarities of changed wnids go: a rerun finishes the job
        tx.forget_class_similarity(classes=rewired)
    atomic.write_atomic(pa.Table.from_pylist(rows, schema=layout.CLASSES), store.path / "classes.parquet")
    return changed
