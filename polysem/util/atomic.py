"""The one atomic write: a file appears complete or not at all, and is on disk once it does."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from polysem.errors import DiskFull, NotWritable

__all__ = [
    "atomic_path",
    "disk_full",
    "fsync_dir",
    "is_disk_full",
    "is_refused",
    "not_writable",
    "write_atomic",
    "write_failure",
    "write_row_groups_atomic",
    "write_text_atomic",
    "writing",
]


def is_disk_full(error: BaseException) -> bool:
    """Whether `error` says the disk (or the user's quota) is full: an OSError with ENOSPC/EDQUOT, or
    the text Arrow and DuckDB give it ("Error writing bytes to file ... No space left on device")."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(error).lower()
    return "no space left on device" in text or "disk quota exceeded" in text


def is_refused(error: BaseException) -> bool:
    """Whether `error` says the file system refused the write: EACCES, EPERM or EROFS, as an OSError or in the
    text Arrow gives ("Failed to open local file ... [errno 1] Operation not permitted")."""
    if isinstance(error, OSError) and error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return True
    text = str(error).lower()
    return any(f"[errno {code}]" in text for code in (errno.EACCES, errno.EPERM, errno.EROFS))


def _reason(error: BaseException) -> str:
    return os.strerror(error.errno) if isinstance(error, OSError) and error.errno else str(error).split("Detail: ")[-1]


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def disk_full(what: str, folder: Path, needed: int | None = None, kept: str | None = None) -> DiskFull:
    """The one message for a full disk: what was being written, the space free there and, when known,
    the space needed, and the fix. Nothing was written: the atomic write removed its temporary file.
    `kept`: what became of the target, when it is not a file that was not written."""
    try:
        free = f"{_size(shutil.disk_usage(_existing(folder)).free)} free"
    except OSError:
        free = "free space unknown"
    need = f", about {_size(needed)} needed" if needed else ""
    return DiskFull(f"no space left on the disk holding {what} ({free}{need}); {kept or _FILE_KEPT}: free space on "
                    "that disk (or write to another disk) and run the command again")


_FILE_KEPT = "that file was not written (what was stored before it is kept)"
_FOLDER_KEPT = "nothing was written there (what it held before is kept)"


def not_writable(path: Path, error: BaseException, folder: Path | None = None,
                 into_folder: bool = False) -> NotWritable:
    """The one message for a refused write: the user's target `path` (never the temporary file or lock that
    met the refusal), the reason, and the fix: make `folder` writable (by default the one a new file there
    needs: the nearest existing folder holding `path`). `into_folder`: `path` is a folder written into."""
    fix = _existing(folder if folder is not None else _home(path, into_folder))
    return NotWritable(f"the file system refused to write {path} ({_reason(error)}); {_kept(into_folder)}: make "
                       f"{fix} writable (its permissions, `chattr -i`, a read-write mount) and run the command again")


def _kept(into_folder: bool) -> str:
    return _FOLDER_KEPT if into_folder else _FILE_KEPT


def _home(path: Path, into_folder: bool) -> Path:
    """The folder a write of `path` creates its files in: `path` itself when it is a folder written into."""
    return path if into_folder else path.parent


def write_failure(path: Path, error: BaseException, needed: int | None = None, folder: Path | None = None,
                  into_folder: bool = False) -> DiskFull | NotWritable | None:
    """`error` as the failure to write `path` it is: DiskFull for a full disk, NotWritable for a refused
    write (`not_writable`), None for anything else."""
    if is_disk_full(error):
        return disk_full(str(path), folder if folder is not None else _home(path, into_folder), needed,
                         _kept(into_folder))
    if is_refused(error):
        return not_writable(path, error, folder, into_folder)
    return None


@contextmanager
def writing(path: Path, needed: int | None = None, folder: Path | None = None,
            into_folder: bool = False) -> Iterator[None]:
    """The block writes `path` for the user, through whatever files it needs (a temporary file, a lock, a
    staging folder): a full disk or a refused write in it becomes DiskFull or NotWritable naming `path`, so a
    message never names a hidden file the user did not ask for. A DiskFull or NotWritable raised inside for
    one of those files (an inner `atomic_path`) is named for `path` too. `folder`: the one to make writable;
    `into_folder`: `path` is a folder the block writes into (a split, a report), not a file.

    Keep reads out of the block where they can fail with EACCES: that would read as a refused write."""
    try:
        yield
    except (DiskFull, NotWritable) as error:
        cause = error.__cause__
        failure = write_failure(path, cause, needed, folder, into_folder) if isinstance(cause, OSError) else None
        if failure is None:
            raise
        raise failure from cause
    except OSError as error:
        failure = write_failure(path, error, needed, folder, into_folder)
        if failure is None:
            raise
        raise failure from error


def _existing(folder: Path) -> Path:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


@contextmanager
def atomic_path(path: Path, suffix: str = ".tmp", needed: int | None = None) -> Iterator[Path]:
    """The one atomic write: yields a hidden temporary name in the same folder (which no
    `*.parquet` glob matches and the store's sweep recognises); once the block has written
    it, it is flushed to disk and renamed to `path`. On failure it is removed; a full disk
    becomes `DiskFull` and a refused write `NotWritable`, each naming `path`, never the temporary
    name (`needed`: the bytes to write, when known). A writer that raises no OSError of its own
    (torch.save given a file name raises RuntimeError) should be given an open file instead.
    """
    with writing(path, needed):
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}{suffix}"
    try:
        with writing(path, needed):
            yield tmp
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, path)
    finally:
        # on a read-only file system even removing a file that was never made fails (EROFS); that must not
        # hide the failure being raised, and a temporary file that stays is swept by the store's next write
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def write_atomic(table: pa.Table, path: Path) -> None:
    """Write a Parquet file so that it appears complete or not at all."""
    write_row_groups_atomic([table], table.schema, path)


def write_row_groups_atomic(tables: Iterable[pa.Table], schema: pa.Schema, path: Path, row_group_rows: int = 1 << 20) -> None:
    """Like `write_atomic`, with each table of `tables` in row groups of its own (at most
    `row_group_rows` rows each): a row group never mixes two tables' rows, which is what lets
    compaction give each class row groups whose min/max statistics name that class alone."""
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema, compression="zstd", **_encodings(schema)) as writer:
        for table in tables:
            writer.write_table(table, row_group_size=row_group_rows)


def write_text_atomic(text: str, path: Path) -> None:
    data = text.encode()
    with atomic_path(path, needed=len(data)) as tmp:
        tmp.write_bytes(data)


def _encodings(schema: pa.Schema) -> dict:
    """Dictionaries for strings only; float columns byte-stream-split.

    Dictionary encoding of float32 attributions costs more than it saves, and
    byte stream splitting lets zstd compress floats: about 8.6 KB per ResNet-50
    image instead of 14 KB with pyarrow's defaults (docs/benchmarks.md).
    """
    strings, floats = [], []
    for field in schema:
        if pa.types.is_string(field.type):
            strings.append(field.name)
        elif pa.types.is_floating(field.type):
            floats.append(field.name)
        elif pa.types.is_list(field.type) and pa.types.is_floating(field.type.value_type):
            floats.append(f"{field.name}.list.element")
    return {"use_dictionary": strings, "use_byte_stream_split": floats}




def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
