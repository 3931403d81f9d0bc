"""utils/allocator.py: glibc malloc keeps freed memory for reuse in train.py's process."""
import subprocess
import sys
from pathlib import Path

import pytest

from utils.allocator import retain_freed_memory


def _run(code: str, **env: str) -> str:
    import os
    e = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "LD_PRELOAD"}
    e.update(env)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, timeout=120,
                       cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


CODE = "from utils.allocator import retain_freed_memory as f; print(f())"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_retain_freed_memory_sets_glibc_options_unless_the_user_chose():
    assert _run(CODE) == "True"
    assert _run(CODE, MALLOC_TRIM_THRESHOLD_="131072") == "False"  # the user's tunables win


def test_retain_freed_memory_is_harmless_to_call_twice():
    first = retain_freed_memory()
    assert retain_freed_memory() == first
