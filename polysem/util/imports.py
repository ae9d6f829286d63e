"""Importing a user's module from a recorded folder, without leaving sys.path changed, and deciding,
before anything is imported, whether a store's recorded code may run at all (`code_folder`).

A store never runs code on its own say-so: a `module:callable` it names is imported only from an
absolute folder outside the store, either the folder its first ingest recorded or one the user names
(`trust_code`, or the POLYSEM_TRUST_CODE environment variable).
"""

from __future__ import annotations

import importlib.util
import os
import stat
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib.machinery import PathFinder
from pathlib import Path
from types import ModuleType

from polysem.errors import ModelError

__all__ = ["OBJECT_PREFIX", "TRUST_ENV", "code_folder", "code_status", "import_from_folder", "importable_from", "library_folders",
           "trusted_folders"]

TRUST_ENV = "POLYSEM_TRUST_CODE"  # folders (absolute, ':'-separated) a store's code may be imported from
# A model spec that names a Python object given in the process (`object:<module>.<qualname>`, ingest/objects.py),
# not code to import: a store that records one runs no code of its own.
OBJECT_PREFIX = "object:"


@contextmanager
def importable_from(folder: str | None, outside: str | os.PathLike | None = None) -> Iterator[None]:
    """sys.path with `folder` first, for the duration of an import; restored afterwards. With `outside`
    (a store), every sys.path entry inside that folder is left out meanwhile: the current folder ('')
    too, when it is inside the store."""
    saved = list(sys.path)
    if outside is not None:
        sys.path[:] = [entry for entry in saved if not _inside(Path(entry or os.getcwd()), Path(outside))]
    if folder is not None:
        sys.path.insert(0, folder)
    try:
        yield
    finally:
        sys.path[:] = saved


def import_from_folder(module_name: str, folder: str) -> ModuleType:
    """Import `module_name` from `folder` alone: each package level is looked up in `folder` (then in its
    parent package's folders) and nowhere else, so a namespace package is never merged with same-named
    folders elsewhere on sys.path (the current folder, say). A level already imported must come from
    `folder` too. The module's own imports see sys.path with `folder` first (`importable_from`)."""
    parts = module_name.split(".")
    locations = [folder]
    module: ModuleType | None = None
    for depth in range(len(parts)):
        name = ".".join(parts[: depth + 1])
        existing = sys.modules.get(name)
        if existing is not None:
            if not _comes_from(existing, Path(folder)):
                where = getattr(existing, "__file__", None) or list(getattr(existing, "__path__", []))
                raise ModelError(f"{name} is already imported from {where}, not from {folder}; start a new "
                                 "process to import the store's code")
            module = existing
        else:
            spec = PathFinder.find_spec(name, locations)
            if spec is None or spec.loader is None:
                raise ModuleNotFoundError(f"no module named {name!r} in {folder}", name=name)
            if spec.submodule_search_locations is not None:  # a namespace's portions: this folder's only
                spec.submodule_search_locations = list(spec.submodule_search_locations)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                sys.modules.pop(name, None)
                raise
            if depth:
                setattr(sys.modules[".".join(parts[:depth])], parts[depth], module)
        locations = list(getattr(module, "__path__", None) or [])
    if module is None:
        raise ModelError(f"bad module name {module_name!r}")
    return module


def _comes_from(module: ModuleType, folder: Path) -> bool:
    """Whether an imported module's file (or each folder of a package) lies in `folder`, links resolved."""
    file = getattr(module, "__file__", None)
    places = [file] if isinstance(file, str) else list(getattr(module, "__path__", []))
    return bool(places) and all(_inside(Path(place), folder) for place in places)


def _inside(path: Path, folder: Path) -> bool:
    """Is `path`, links resolved, `folder` or inside it?"""
    try:
        return Path(path).resolve().is_relative_to(Path(folder).resolve())
    except (OSError, RuntimeError):  # a link loop: not a place to import from either
        return True


def trusted_folders(trust_code: str | os.PathLike | Sequence[str | os.PathLike] | None) -> list[Path]:
    """The folders the user named for a store's code: `trust_code` (a folder or a list; a relative one is
    taken from the current folder), else POLYSEM_TRUST_CODE (absolute folders separated by ':')."""
    if trust_code is None:
        entries = [entry for entry in os.environ.get(TRUST_ENV, "").split(os.pathsep) if entry]
        for entry in entries:
            if not os.path.isabs(entry):
                raise ModelError(f"{TRUST_ENV} names the relative folder '{entry}'; name each folder by its "
                                 "absolute path")
        named = "the folder in " + TRUST_ENV
        folders = [Path(entry) for entry in entries]
    else:
        values = [trust_code] if isinstance(trust_code, (str, os.PathLike)) else list(trust_code)
        if not all(isinstance(value, (str, os.PathLike)) for value in values) or not values:
            raise ModelError(f"`trust_code` must be a folder or a list of folders, got {trust_code!r}")
        named = "the `trust_code` folder"
        folders = [Path(value).expanduser().absolute() for value in values]
    for folder in folders:
        if not folder.is_dir():
            raise ModelError(f"{named} {folder} is not a folder; name the folder that holds the store's code")
    return folders


def _module_paths(module_name: str, folder: Path) -> list[Path] | None:
    """The files and package folders `module_name` is found at under `folder`, looked up without running
    anything (not even a package's __init__); None when its top package is not there."""
    paths: list[Path] = []
    locations = [str(folder)]
    parts = module_name.split(".")
    for depth in range(len(parts)):
        spec = PathFinder.find_spec(".".join(parts[: depth + 1]), locations)
        if spec is None:
            return paths or None  # a submodule not found statically: the import will say so
        if spec.origin and spec.origin not in ("namespace", "built-in", "frozen"):
            paths.append(Path(spec.origin))
        locations = list(spec.submodule_search_locations or [])
        paths += [Path(location) for location in locations]
        if not locations:
            break
    return paths


def _refusal(what: str, spec: str, problem: str, module_name: str, searched: list[Path]) -> ModelError:
    top = module_name.split(".")[0]
    tried = f" (the trusted folders {', '.join(map(str, searched))} hold no {top})" if searched else ""
    return ModelError(f"the store names the {what} {spec} {problem}{tried}; a store never runs code on its own "
                      f"say-so: read the code, then pass `trust_code`=FOLDER naming a folder outside the store that "
                      f"holds {top} (or set {TRUST_ENV}=FOLDER)")


def code_folder(spec: str, what: str, recorded_root: str | None, store_dir: str | os.PathLike,
                trust_code: str | os.PathLike | Sequence[str | os.PathLike] | None = None) -> str | None:
    """The folder from which the store's `what` (model or transform) `spec` may be imported, decided before
    anything is imported; None when the spec names no code (a torchvision model, the built-in transform,
    a Python object given in the process).

    A named folder (`trust_code`, else POLYSEM_TRUST_CODE) that holds the module overrides the recorded
    one. Refused: a named folder inside the store; a recorded folder that is missing (none was recorded),
    relative, inside the store (links resolved) or absent from this machine (a store sent from another:
    the current folder is not tried instead); and a module whose files lie inside the store, whatever the
    folder. Each refusal is one line naming the module and the fix.
    """
    module_name, sep, _ = spec.partition(":")
    if not sep or spec.startswith(OBJECT_PREFIX):
        return None
    store = Path(store_dir)
    top = module_name.split(".")[0]
    folders = trusted_folders(trust_code)
    for folder in folders:
        if _inside(folder, store):
            raise ModelError(f"the trusted folder {folder} is inside the store {store}; a store never runs "
                             f"its own code: copy {top} to a folder outside the store, read it, and name that "
                             "folder in `trust_code`")
    for folder in folders:
        paths = _module_paths(module_name, folder)
        if paths is not None:
            _check_outside(paths, store, what, spec, module_name, folder)
            return str(folder)
    if not isinstance(recorded_root, str) or not recorded_root:
        raise _refusal(what, spec, "without the folder it was imported from", module_name, folders)
    if not os.path.isabs(recorded_root):
        raise _refusal(what, spec, f"from the relative folder '{recorded_root}'", module_name, folders)
    root = Path(recorded_root)
    real = Path(os.path.realpath(root))
    if real != Path(os.path.normpath(root)):  # /proc/self/cwd, a link: polysem records the real folder
        raise _refusal(what, spec, f"from {root}, which leads to {real} (through a link or /proc)", module_name,
                       folders)
    if _inside(root, store):
        raise _refusal(what, spec, f"from {root}, inside the store", module_name, folders)
    if not root.is_dir():
        raise _refusal(what, spec, f"from {root}, which does not exist on this machine", module_name, folders)
    paths = _module_paths(module_name, root)
    if paths is None:
        raise _refusal(what, spec, f"from {root}, which holds no {top} now", module_name, folders)
    _check_outside(paths, store, what, spec, module_name, root)
    problem = _unsafe_folder(root, paths)
    if problem is not None:
        raise _refusal(what, spec, f"from {root}, {problem}", module_name, folders)
    return str(root)


def library_folders() -> list[Path]:
    """The Python installation's own folders: the standard library, site-packages and the prefixes'
    library folders. Their modules are anyone's to name, so a store's recorded folder may not be one."""
    import site
    import sysconfig

    folders = {sysconfig.get_paths().get(key) for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    folders |= set(site.getsitepackages()) | {site.getusersitepackages()}
    folders |= {entry for entry in sys.path if entry and Path(entry).name in ("site-packages", "dist-packages")}
    for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}:
        folders |= {os.path.join(prefix, "lib"), os.path.join(prefix, "lib64")}
    return sorted({Path(os.path.realpath(folder)) for folder in folders if folder})


def _unsafe_folder(root: Path, paths: list[Path]) -> str | None:
    """Why a store's recorded folder (`root`, holding the module at `paths`) is no place to import from
    without the user naming it, or None: a folder other users may write to (the module's own files and
    package folders too), or the Python installation's own library. (The current folder reached through
    /proc or a link is refused before: a recorded folder must be its own real path.)"""
    for path in paths:
        if not Path(os.path.realpath(path)).is_relative_to(os.path.realpath(root)):
            return f"where {path} leads outside it, to {os.path.realpath(path)}"
    for path in [root, *paths]:
        try:
            st = os.stat(path)
        except OSError:
            continue
        if st.st_mode & stat.S_IWOTH:
            return f"where {path} can be written by every user of this machine"
        if st.st_uid not in (os.getuid(), 0):
            return f"where {path} belongs to another user (uid {st.st_uid})"
    for above in Path(os.path.realpath(root)).parents:  # a folder above that anyone may rename things in
        try:
            mode = os.stat(above).st_mode
        except OSError:
            continue
        if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
            return f"below {above}, which every user can write (without the sticky bit)"
    for library in library_folders():
        for path in [root, *paths]:
            if Path(os.path.realpath(path)).is_relative_to(library):
                return f"where {path} is part of the Python installation ({library})"
    return None


def _check_outside(paths: list[Path], store: Path, what: str, spec: str, module_name: str, folder: Path) -> None:
    for path in paths:
        if _inside(path, store):
            raise _refusal(what, spec, f"from {folder}, where {module_name} is {path.resolve()}, inside the store",
                           module_name, [])


def code_status(spec: str, what: str, recorded_root: str | None, store_dir: str | os.PathLike,
                trust_code: str | os.PathLike | Sequence[str | os.PathLike] | None = None) -> dict:
    """What `polysem info` shows of the store's `what` code: the spec, the recorded folder, the folder it
    would be imported from now (None for no code or a refused one) and why a refusal happens."""
    try:
        folder = code_folder(spec, what, recorded_root, store_dir, trust_code)
    except ModelError as error:
        return {"spec": spec, "import_root": recorded_root, "imports_from": None, "status": "refused",
                "reason": str(error)}
    if folder is None:
        return {"spec": spec, "import_root": recorded_root, "imports_from": None, "status": "no code",
                "reason": None}
    named = folder != recorded_root or Path(folder) in trusted_folders(trust_code)
    return {"spec": spec, "import_root": recorded_root, "imports_from": folder,
            "module_file": module_file(spec.partition(":")[0], Path(folder)),
            "status": "trusted (named)" if named else "trusted (recorded)", "reason": None}


def module_file(module_name: str, folder: Path) -> str | None:
    """The file `import_from_folder` would run for `module_name` from `folder` (a package's __init__.py;
    None for a namespace package or a module not found), looked up without running anything."""
    locations = [str(folder)]
    origin = None
    for depth, _ in enumerate(module_name.split(".")):
        spec = PathFinder.find_spec(".".join(module_name.split(".")[: depth + 1]), locations)
        if spec is None:
            return None
        origin = spec.origin if spec.origin not in (None, "namespace") else None
        locations = list(spec.submodule_search_locations or [])
    return origin
