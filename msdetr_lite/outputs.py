"""What a command may replace: nothing it did not write, unless the user says so.

The rule (README, "Nothing is lost"): a command writes a file only where there is none, over a
file that the same command wrote earlier and that is unchanged since (an *owned* file), or where
the user passed `--overwrite` (`msdetr train`: `--resume` continues the run it finds). It deletes
nothing else. Every writer asks here first, before any work, and records what it wrote:

    check_replace(out, ["summary.md", "loss_curves.png"], owner="compare", overwrite=False,
                  how="pass --overwrite to replace them, or choose another --out")   # else OutputError
    ... write them ...
    record(out, ["summary.md", "loss_curves.png"], owner="compare")
    owns_folder(out, "data shapes")       # every file under out recorded by that owner, unchanged

The record is `<folder>/.msdetr-outputs.json`: {"files": {path relative to the folder:
{"owner": "compare", "sha256": hex digest of its bytes}}}. A file is owned by `owner` while its
record names `owner` and its bytes still hash to the recorded digest: a file the user edited,
replaced or copied in, or one a crash left half-written, is not. A damaged record owns nothing.
Paths are also checked before any work (`path_problem`): a directory where a file goes, a file
where a folder is needed, a name too long, a folder that cannot be written.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Optional, Sequence

from msdetr_lite.errors import UserError, short_path

__all__ = ["MANIFEST", "OutputError", "check_replace", "check_folder", "record", "owned", "owns_folder", "file_sha256",
           "path_problem", "files_under"]

MANIFEST = ".msdetr-outputs.json"
_SHOWN = 5                                   # blocking files named in one message


class OutputError(UserError):
    """An output that cannot be written as asked (it would replace what the command did not write,
    or the path cannot hold it); one problem per line."""


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes (hex), read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _entries(folder: Path) -> dict[str, dict]:
    """The record of `folder` ({} if there is none or it is damaged: then nothing is owned)."""
    try:
        files = json.loads((folder / MANIFEST).read_text()).get("files")
    except (OSError, ValueError, AttributeError):
        return {}
    return files if isinstance(files, dict) else {}


def owned(folder: Path, name: str, owner: str, entries: Optional[dict] = None) -> bool:
    """Whether `folder/name` is a file recorded by `owner` and unchanged since."""
    entry = (_entries(folder) if entries is None else entries).get(name)
    path = folder / name
    return (isinstance(entry, dict) and entry.get("owner") == owner and path.is_file()
            and not path.is_symlink() and entry.get("sha256") == file_sha256(path))


def files_under(folder: Path) -> list[str]:
    """Every file below `folder` (recursively, the record left out), as sorted relative paths."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if (p.is_file() or p.is_symlink()) and p.name != MANIFEST)


def owns_folder(folder: Path, owner: str) -> bool:
    """Whether everything under `folder` is owned by `owner` (an empty or missing folder is)."""
    folder = Path(folder)
    if not folder.exists():
        return True
    entries = _entries(folder)
    return all(owned(folder, name, owner, entries) for name in files_under(folder))


def _nearest_existing(path: Path) -> Path:
    p = path
    while not os.path.lexists(p) and p.parent != p:
        p = p.parent
    return p


def path_problem(path: Path, folder: bool = False) -> Optional[str]:
    """Why `path` cannot be written as a file (`folder=True`: created as a folder), or None:
    a name longer than the file system allows, an existing directory (file) or file (folder)
    there, a file among its parents, a folder that cannot be written."""
    path = Path(path)
    shown = short_path(path)
    anchor = _nearest_existing(path)                 # lexists: no stat of a name that is too long
    try:
        longest = os.pathconf(anchor if anchor.is_dir() else anchor.parent, "PC_NAME_MAX")
    except (OSError, ValueError):
        longest = 255
    if any(len(os.fsencode(part)) > longest for part in path.parts):
        return f"{os.strerror(errno.ENAMETOOLONG)}: {shown} (at most {longest} bytes per name)"
    if anchor == path:
        if path.is_dir() and not folder:
            return f"{shown} is a directory; give a file name"
        if folder and not path.is_dir():
            return f"{shown} is a file, not a folder"
        anchor = path if folder else path.parent
    elif not anchor.is_dir():
        return f"{short_path(anchor)} is a file, so {shown} cannot be created under it"
    if not os.access(anchor, os.W_OK):
        return f"no permission to write in {short_path(anchor)} (for {shown})"
    return None


def check_folder(folder: Path, error: type = OutputError) -> None:
    """Raise `error` if `folder` cannot be (or be created as) a folder to write in."""
    problem = path_problem(Path(folder), folder=True)
    if problem:
        raise error(problem)


def check_replace(folder: Path, names: Sequence[str], owner: Optional[str], overwrite: bool, how: str,
                  error: type = OutputError) -> None:
    """Raise `error` (one line per problem) unless every `folder/name` can be written: it does not
    exist, `overwrite` is set, or it is owned by `owner` (None: owned files are not replaceable
    either). Paths that cannot hold a file are problems too. Writes nothing."""
    folder = Path(folder)
    check_folder(folder, error)
    problems = [p for p in (path_problem(folder / n) for n in names) if p][:_SHOWN]
    entries = _entries(folder) if owner else {}
    blocking = [n for n in names if not problems and not overwrite and os.path.lexists(folder / n)
                and not (owner and owned(folder, n, owner, entries))]
    if blocking:
        listed = ", ".join(blocking[:_SHOWN]) + (f", ... ({len(blocking)} files)" if len(blocking) > _SHOWN else "")
        mine = f" that {owner} did not write or that changed since" if owner else ""
        problems.append(f"{short_path(folder)} already holds {listed}{mine}; {how}")
    if problems:
        raise error(*problems)


def record(folder: Path, names: Iterable[str], owner: str) -> None:
    """Record `folder/name` (files just written by `owner`) as owned; written atomically."""
    folder = Path(folder)
    entries = _entries(folder)
    for name in names:
        if (folder / name).is_file():
            entries[str(name)] = {"owner": owner, "sha256": file_sha256(folder / name)}
    tmp = folder / f".{MANIFEST}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps({"files": dict(sorted(entries.items()))}, indent=0) + "\n")
    os.replace(tmp, folder / MANIFEST)
