"""The OpenMP wait policy of the command-line tools: one rule, applied before torch loads (libgomp reads
``OMP_WAIT_POLICY`` once, when it starts).

Rule: idle OpenMP threads sleep (``PASSIVE``) unless the process is a single-process training. Spinning threads
answer the next parallel region sooner, which a training step (thousands of short regions) gains from on idle
cores; they collapse when processes oversubscribe the cores, so inference tools (which share a machine with an
app or a camera) and every process of a multi-process ``torchrun`` sleep. A value already in the environment
always wins. The measurements behind the rule are in docs/benchmarks.md ("The OpenMP wait policy").

Only the CLIs call :func:`apply_wait_policy`, from their ``if __name__ == "__main__"`` block at the top of the
file: importing a script as a library never changes the process's threads.
"""
from __future__ import annotations

import os

PASSIVE = "PASSIVE"


def wait_policy(training: bool, world_size: int = 1) -> str | None:
    """The policy the rule gives: ``PASSIVE``, or None for libgomp's default (single-process training)."""
    return None if training and world_size <= 1 else PASSIVE


def apply_wait_policy(training: bool = False) -> str | None:
    """Set ``OMP_WAIT_POLICY`` per :func:`wait_policy` unless the environment has one; returns what is in effect."""
    policy = wait_policy(training, int(os.environ.get("WORLD_SIZE", "1")))
    if policy is not None:
        os.environ.setdefault("OMP_WAIT_POLICY", policy)
    return os.environ.get("OMP_WAIT_POLICY")
