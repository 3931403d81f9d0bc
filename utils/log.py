"""The project's logger (``moyolo``) and the console styling CLIs use.

Library modules log through :data:`LOGGER`; only CLIs call :func:`set_logging` (rank 0 of a distributed run logs
INFO, the others WARNING).
"""
from __future__ import annotations

import logging
import sys

LOGGER = logging.getLogger("moyolo")


# --------------------------------------------------------------------------- logging / misc
class StderrHandler(logging.StreamHandler):
    """A stream handler that writes to whatever ``sys.stderr`` is at the time of each record (not the stream
    of the moment it was made), so a CLI called twice in one process, or under a captured stderr, still logs."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def set_logging(rank: int = -1, verbose: bool = True) -> None:
    """Configure the project logger for CLIs (rank 0 / single process logs INFO)."""
    level = logging.INFO if (verbose and rank in (-1, 0)) else logging.WARNING
    if not LOGGER.handlers:
        handler = StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        LOGGER.addHandler(handler)
    LOGGER.setLevel(level)
    LOGGER.propagate = False


def colorstr(*args: str) -> str:
    """Wrap the last argument in ANSI colour codes, e.g. ``colorstr('blue', 'bold', 'text')``."""
    *styles, text = args if len(args) > 1 else ("blue", "bold", args[0])
    codes = {
        "black": "\033[30m", "red": "\033[31m", "green": "\033[32m", "yellow": "\033[33m",
        "blue": "\033[34m", "magenta": "\033[35m", "cyan": "\033[36m", "white": "\033[37m",
        "bold": "\033[1m", "underline": "\033[4m", "end": "\033[0m",
    }
    return "".join(codes[s] for s in styles) + f"{text}" + codes["end"]
