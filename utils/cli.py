"""One way for every command-line tool to end on an error: one line, named cause, non-zero exit.

Each CLI's ``if __name__ == "__main__"`` calls :func:`run_cli`. A user error (bad flag value,
missing or damaged file, unreadable yaml, full disk, ...) becomes a single line on stderr such as
``train.py: error: --epochs -3: must be at least 1`` and exit code 2 (1 for failures that are not
the user's input, e.g. a non-finite loss). A traceback is shown only with ``--verbose`` on the
command line or ``MOY_TRACEBACK=1`` in the environment.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn, Optional

TRACEBACK_ENV = "MOY_TRACEBACK"


class UserError(Exception):
    """Something the user gave (a flag, a file, a value) is wrong; the message says what and where."""


class RunFailed(Exception):
    """The run could not go on for a reason that is not a bad input (reported, exit code 1)."""


def fail(message: str) -> NoReturn:
    """Raise a :class:`UserError` with ``message`` (e.g. ``fail("--img-size 0: must be positive")``)."""
    raise UserError(message)


def require(condition: bool, message: str) -> None:
    """``fail(message)`` unless ``condition`` holds."""
    if not condition:
        fail(message)


def _cv2_text(text: str) -> str:
    """``OpenCV(4.x) /src/file.cpp:199: error: (-215:...) msg`` -> ``OpenCV: (-215:...) msg``."""
    head, sep, tail = text.partition(" error: ")
    return f"OpenCV: {tail.strip()}" if sep and head.startswith("OpenCV") else text


def one_line(exc: BaseException) -> str:
    """A single-line description of ``exc`` that names the file for OS errors."""
    if isinstance(exc, OSError) and exc.strerror:
        where = exc.filename if exc.filename is not None else ""
        text = f"{where}: {exc.strerror}" if where else exc.strerror
        if exc.filename2 is not None:
            text += f" (-> {exc.filename2})"
    else:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        text = " ".join(lines) if len(lines) <= 3 else " ".join(lines[:3]) + " ..."
        if type(exc).__module__ == "cv2":
            text = _cv2_text(text)
    name = type(exc).__name__
    if not text:
        return name
    if isinstance(exc, (KeyError, IndexError, AttributeError, AssertionError)):
        return f"{name}: {text}"  # their message alone ('x') does not say what went wrong
    return text


def want_traceback(argv: Optional[Sequence[str]]) -> bool:
    """Tracebacks are for ``--verbose`` runs or ``MOY_TRACEBACK=1``."""
    args = sys.argv[1:] if argv is None else list(argv)
    return "--verbose" in args or os.environ.get(TRACEBACK_ENV, "") not in ("", "0")


def exit_code(exc: BaseException) -> int:
    """2 for bad input (the argparse convention), 1 for a run that failed for another reason."""
    if isinstance(exc, RunFailed):
        return 1
    if isinstance(exc, (UserError, OSError, ValueError, KeyError, TypeError, RuntimeError)):
        return 2
    if type(exc).__module__.split(".")[0] in ("cv2", "yaml"):  # undecodable image, malformed yaml
        return 2
    return 1


def run_cli(main: Callable[[Optional[Sequence[str]]], Optional[int]], argv: Optional[Sequence[str]] = None,
            prog: Optional[str] = None) -> int:
    """Call ``main(argv)`` and turn any exception into one ``prog: error: ...`` line and an exit code."""
    prog = prog or os.path.basename(sys.argv[0] or "cli")
    try:
        return int(main(argv) or 0)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the point is that no error escapes as a traceback
        if want_traceback(argv):
            raise
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
        return exit_code(e)
