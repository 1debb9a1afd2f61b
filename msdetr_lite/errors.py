"""What counts as a mistake the user can fix, and the one line per problem that says so.

    class DataError(UserError, ValueError): ...     # every error a user can fix derives from UserError
    user_problems(error)    # -> ["line", ...] for a user's mistake, None for anything else (a bug)
    guarded("msdetr train", command, debug=False)  # the command line's one boundary -> exit code

The command line's boundary (`guarded`, which `cli.main` and the shapes generator's own command
run in) prints `user_problems` as one line each and exits 2; Ctrl-C exits 130; anything else is
a bug, printed in one line and exit 3 (`--debug` shows the traceback). A user's mistake is:

* a `UserError`: a bad argument or config, an unusable data file, checkpoint or run folder, an
  output that would replace something the command did not write;
* what the operating system refuses (`OSError`: a missing file, permission, no space left, a file
  name too long, a directory where a file was expected, ...);
* memory exhausted (`MemoryError`, torch's out-of-memory errors);
* a file that is not UTF-8 text where text was expected (`UnicodeDecodeError`).

This module imports nothing heavy: every other module may derive its errors from it.
"""
from __future__ import annotations

import os
import sys
import warnings
from typing import Callable, Optional

__all__ = ["UserError", "UsageError", "user_problems", "guarded"]

_LONGEST_NAME = 120          # characters of a path shown in a message (a 5000-character name stays one line)


class UserError(Exception):
    """Base of the errors the user can fix; `problems` holds one line per problem."""

    kind = "error"                          # how `guarded` names it: "<prog>: error: <problem>"

    def __init__(self, *problems):
        self._problems = [str(p) for p in problems]
        super().__init__("; ".join(self._problems))

    @property
    def problems(self) -> list[str]:
        return list(self._problems)


class UsageError(UserError, ValueError):
    """A bad argument: an option, a path, a size, a combination of them."""


def short_path(name) -> str:
    """`name` as text, its middle elided past _LONGEST_NAME characters."""
    text = str(name)
    if len(text) <= _LONGEST_NAME:
        return text
    half = _LONGEST_NAME // 2
    return f"{text[:half]}...{text[-half:]} ({len(text)} characters)"


def _os_problem(e: OSError) -> str:
    """"<what the system said>: <path>" (e.g. "No space left on device: runs/x/metrics.jsonl");
    our own OSErrors (FileNotFoundError("checkpoint not found: ...")) carry their message as is."""
    if e.errno is None or not e.strerror:
        return str(e)
    names = [short_path(n) for n in (e.filename, e.filename2) if n is not None]
    return f"{e.strerror}: {' -> '.join(names)}" if names else e.strerror


def _is_out_of_memory(e: BaseException) -> bool:
    if isinstance(e, MemoryError):
        return True
    oom = getattr(sys.modules.get("torch"), "OutOfMemoryError", None)    # torch imported only if in use
    if oom is not None and isinstance(e, oom):
        return True
    # torch's CPU allocator reports a failed allocation as a plain RuntimeError
    return isinstance(e, RuntimeError) and "can't allocate memory" in str(e)


def user_problems(error: BaseException) -> Optional[list[str]]:
    """The lines to print if `error` is a mistake the user can fix (see the module docstring);
    None for anything else."""
    if isinstance(error, UserError):
        return error.problems
    if isinstance(error, OSError):
        return [_os_problem(error)]
    if _is_out_of_memory(error):
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return [f"out of memory ({short_path(first)}); use smaller sizes (train.batch_size, the image "
                f"sizes, model sizes) or free memory"]
    if isinstance(error, UnicodeDecodeError):
        return [f"a file that should be UTF-8 text is not ({error.reason} at byte {error.start})"]
    return None


def guarded(prog: str, command: Callable[[], int], debug: bool = False) -> int:
    """Run `command()` and return its exit code; every failure ends here. A user's mistake
    (`user_problems`) prints one line per problem and exits 2 (named by the error's `kind`,
    e.g. "config error"); Ctrl-C exits 130; anything else is a bug: one line, exit 3. With `debug`
    (or MSDETR_DEBUG=1) a failure raises instead, with its traceback. Warnings print as one line each."""
    debug = debug or os.environ.get("MSDETR_DEBUG", "") not in ("", "0")

    def one_line(message, category, filename, lineno, file=None, line=None):
        text = str(message).strip().splitlines()
        print(f"{prog}: warning: {text[0] if text else category.__name__}", file=sys.stderr)

    with warnings.catch_warnings():
        if not debug:
            warnings.showwarning = one_line
        try:
            return command()
        except KeyboardInterrupt:
            if debug:
                raise
            print(f"{prog}: interrupted", file=sys.stderr)
            raise SystemExit(130) from None
        except Exception as e:
            if debug:
                raise
            problems = user_problems(e)
            if problems is None:
                text = str(e).strip().splitlines()[0] if str(e).strip() else ""
                print(f"{prog}: internal error: {type(e).__name__}: {short_path(text)} (a bug in msdetr_lite, "
                      f"not in your input; rerun with --debug for the traceback and report it)", file=sys.stderr)
                raise SystemExit(3) from None
            kind = getattr(e, "kind", "error")
            sys.stderr.write("".join(f"{prog}: {kind}: {p}\n" for p in problems))
            raise SystemExit(2) from None
