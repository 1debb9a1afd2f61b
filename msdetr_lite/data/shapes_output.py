"""Where the shapes set is written, and what it may replace (`msdetr_lite.outputs`).

    check_arguments(n_train, n_val, knobs, seed)        # UsageError before anything is drawn
    write_dataset(out, names, overwrite, draw)          # draw(tmp) fills a temporary folder

Nothing is lost: the dataset is drawn into a temporary folder beside `out` and moved into place
when complete (an interrupted run leaves `out` as it was). `out` may be missing or empty, or hold
a dataset this generator wrote and nothing else, unchanged since (its record
`out/.msdetr-outputs.json` lists every file with its digest; such a folder is replaced whole).
Beside other files, the dataset's own files are replaced where they are this generator's and
unchanged, and other files are kept; a file of the dataset's names that is not (the user's, or
edited) stops it unless `overwrite` (`--overwrite`: those are replaced too). Sizes that cannot
fit in memory, or that Pillow would refuse to open, are refused before anything is drawn.

The drawing itself is synthetic.py's; this module only checks and moves files.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable, Optional, Sequence

from PIL import Image

from msdetr_lite.errors import UsageError
from msdetr_lite.outputs import check_folder, check_replace, files_under, owned, owns_folder, record
from msdetr_lite.shapes_knobs import Knobs

__all__ = ["OWNER", "check_arguments", "file_names", "write_dataset"]

OWNER = "data shapes"                       # whose files these are, in the folder's record
SPLITS = ("train", "val")
# bytes per pixel of the widest image while it is drawn: the palette canvas, one object mask,
# the PNG encoder's buffers
_BYTES_PER_PIXEL = 4


def _widest(image_size: int, aspect_jitter: float) -> int:
    """The largest width synthetic._image_size can draw."""
    return max(8, int(round(image_size * (1 + max(aspect_jitter, 0.0)) / 8)) * 8)


def _available_memory() -> Optional[int]:
    """Bytes of memory available to a new allocation (Linux: MemAvailable), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_arguments(n_train: int, n_val: int, knobs: Knobs, seed: int) -> None:
    """UsageError (one line per problem) for arguments that cannot make a dataset: negative counts
    or seed, bad knobs (`Knobs.problems`: images too small for the shapes, an aspect jitter
    outside [0, 1), ...), images larger than Pillow opens (Image.MAX_IMAGE_PIXELS) or than the
    memory available. Allocates nothing."""
    problems = []
    if n_train < 0 or n_val < 0:
        problems.append(f"n_train={n_train}, n_val={n_val}: must be >= 0")
    if seed < 0:
        problems.append(f"seed={seed}: must be >= 0")
    problems += knobs.problems()
    if not problems:
        size, widest = knobs.image_size, _widest(knobs.image_size, knobs.aspect_jitter)
        pixels = widest * size
        need, free = pixels * _BYTES_PER_PIXEL, _available_memory()
        if pixels > Image.MAX_IMAGE_PIXELS:
            problems.append(f"image_size={size}: images up to {widest}x{size} px ({pixels / 1e6:.0f} Mpx) are "
                            f"larger than Pillow opens ({Image.MAX_IMAGE_PIXELS / 1e6:.0f} Mpx): the dataset "
                            f"could not be read")
        elif free is not None and need > free:
            problems.append(f"image_size={size}: drawing one image needs about {need / 2**30:.1f} GiB, "
                            f"{free / 2**30:.1f} GiB of memory is available")
    if problems:
        raise UsageError(*problems)


def file_names(n_train: int, n_val: int) -> list[str]:
    """The files a dataset of n_train / n_val images consists of, relative to its folder."""
    return ([f"annotations/instances_{split}.json" for split in SPLITS]
            + [f"{split}/{i:06d}.png" for split, n in zip(SPLITS, (n_train, n_val)) for i in range(1, n + 1)])


def _install(tmp: Path, out: Path, replace_whole: bool) -> bool:
    """Move the complete dataset in `tmp` to `out`: by renaming the folder where `out` is missing
    or empty, or holds only a dataset of ours (`replace_whole`: moved aside, then deleted); else
    file by file over the same names, deleting files of an earlier dataset of ours that the new
    one does not have (returns True: the new files still need recording)."""
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    if not out.exists():
        tmp.rename(out)
    elif replace_whole:
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old)
    else:
        new = set(files_under(tmp))
        for name in files_under(out):
            if name not in new and owned(out, name, OWNER):
                (out / name).unlink()
        for name in new:
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / name, out / name)
        return True
    return False


def write_dataset(out_dir: str | Path, names: Sequence[str], overwrite: bool, draw: Callable[[Path], None]) -> Path:
    """Check `out_dir` (OutputError before any work: see the module docstring), let `draw(tmp)`
    write the files `names` into a temporary folder beside it, record them and move them into
    place. Returns the absolute folder written."""
    out = Path(os.path.abspath(out_dir))
    if not out.name:
        raise UsageError(f"out_dir={str(out_dir)!r}: give a folder below the file system root")
    check_folder(out)                                     # first: no stat of a name that cannot exist
    replace_whole = out.is_dir() and owns_folder(out, OWNER)
    check_replace(out, [] if replace_whole else names, OWNER, overwrite,
                  how="pass --overwrite to replace those files, or choose another --out")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        tmp.mkdir(parents=True)
        draw(tmp)
        record(tmp, names, OWNER)
        if _install(tmp, out, replace_whole):
            record(out, names, OWNER)
    finally:
        if tmp.exists():                           # after a failure, or the files moved one by one
            shutil.rmtree(tmp)
    return out
