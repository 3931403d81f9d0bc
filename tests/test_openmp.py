"""utils/openmp.py: one wait-policy rule for every CLI, applied before torch loads, never on a library import."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from utils.openmp import wait_policy

ROOT = Path(__file__).resolve().parents[1]


def _clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "WORLD_SIZE")}
    env.update({"PYTHONPATH": str(ROOT), **extra})
    return env


def test_the_rule():
    assert wait_policy(training=True) is None  # one training process: libgomp's default wait
    assert wait_policy(training=True, world_size=2) == "PASSIVE"  # torchrun's processes share the cores
    assert wait_policy(training=False) == "PASSIVE"  # inference tools


@pytest.mark.parametrize("script,world,preset,expected", [
    ("train.py", None, {}, "None"), ("train.py", "2", {}, "PASSIVE"), ("test.py", None, {}, "PASSIVE"),
    ("detect.py", None, {}, "PASSIVE"), ("train.py", "2", {"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE"),
    ("detect.py", None, {"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE")])
def test_each_cli_applies_it_before_torch_loads(script, world, preset, expected):
    """Run as a program (``__main__``), each script has the policy in its environment by the time torch is
    imported; a value the user set wins."""
    code = (f"import runpy, sys, os; sys.argv = [{script!r}, '--help']\n"
            "import builtins; real = builtins.__import__\n"
            "def spy(name, *a, **k):\n"
            "    if name == 'torch':  # the policy must be in place by now; stop before torch loads\n"
            "        print('POLICY', os.environ.get('OMP_WAIT_POLICY'), flush=True); os._exit(0)\n"
            "    return real(name, *a, **k)\n"
            "builtins.__import__ = spy\n"
            f"runpy.run_path({script!r}, run_name='__main__')\n")
    env = _clean_env(**({"WORLD_SIZE": world} if world else {}), **preset)
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert [ln for ln in r.stdout.splitlines() if ln.startswith("POLICY")][-1] == f"POLICY {expected}"


def test_importing_a_script_as_a_library_leaves_the_threads_alone():
    code = "import os, detect, test, train; print('POLICY', os.environ.get('OMP_WAIT_POLICY'))"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_clean_env(), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.splitlines()[-1] == "POLICY None"
