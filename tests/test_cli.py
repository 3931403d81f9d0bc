"""utils/cli.py: every CLI error is one line with the cause, a non-zero exit, no traceback by default."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from utils.atomic import WriteError
from utils.cli import RunFailed, UserError, exit_code, fail, one_line, require, run_cli, want_traceback

ROOT = Path(__file__).resolve().parents[1]


def cv2_error() -> Exception:
    try:
        cv2.cvtColor(np.zeros((0, 0), np.uint8), cv2.COLOR_BGR2GRAY)
    except cv2.error as e:
        return e
    raise AssertionError("cv2 accepted an empty image")


def raiser(exc: BaseException):
    def main(argv):
        raise exc
    return main


@pytest.fixture(autouse=True)
def no_env_traceback(monkeypatch):
    monkeypatch.delenv("MOY_TRACEBACK", raising=False)


def test_fail_and_require():
    with pytest.raises(UserError, match="--epochs -3: must be at least 1"):
        fail("--epochs -3: must be at least 1")
    require(True, "never")
    with pytest.raises(UserError, match="bad"):
        require(False, "bad")


@pytest.mark.parametrize("exc, code, expected", [
    (UserError("--img-size 0: must be positive"), 2, "--img-size 0: must be positive"),
    (RunFailed("loss is NaN at epoch 3"), 1, "loss is NaN at epoch 3"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "data/x.yaml"), 2,
     "data/x.yaml: No such file or directory"),
    (WriteError(errno.ENOSPC, "cannot write: No space left on device", "runs/exp/last.pt"), 2,
     "runs/exp/last.pt: cannot write: No space left on device"),
    (RuntimeError("Error(s) in loading state_dict\n  size mismatch for x"), 2,
     "Error(s) in loading state_dict size mismatch for x"),
    (ValueError("lr0: must be finite"), 2, "lr0: must be finite"),
    (KeyError("lr0"), 2, "KeyError: 'lr0'"),
    (MemoryError(), 1, "MemoryError"),
    (yaml.YAMLError("mapping values are not allowed here"), 2, "mapping values are not allowed here"),
])
def test_run_cli_one_line_and_exit_code(capsys, exc, code, expected):
    assert run_cli(raiser(exc), [], prog="tool.py") == code
    err = capsys.readouterr().err
    assert err == f"tool.py: error: {expected}\n"


def test_cv2_error_is_short_and_bad_input():
    e = cv2_error()
    msg = one_line(e)
    assert "\n" not in msg and msg.startswith("OpenCV: ") and "cvtColor" in msg
    assert ".cpp" not in msg  # the OpenCV source location is noise for a user
    assert exit_code(e) == 2


def test_oserror_with_two_names():
    e = OSError(errno.EXDEV, os.strerror(errno.EXDEV), "a.tmp", None, "b")
    assert one_line(e) == f"a.tmp: {os.strerror(errno.EXDEV)} (-> b)"


def test_long_messages_are_cut_to_one_line():
    msg = one_line(RuntimeError("\n".join(f"line {i}" for i in range(10))))
    assert "\n" not in msg and msg.startswith("line 0 line 1 line 2") and msg.endswith("...")


def test_success_and_return_codes():
    assert run_cli(lambda argv: None, []) == 0
    assert run_cli(lambda argv: 3, []) == 3


def test_system_exit_passes_through():
    def main(argv):
        raise SystemExit(2)
    with pytest.raises(SystemExit):
        run_cli(main, [])


def test_keyboard_interrupt(capsys):
    assert run_cli(raiser(KeyboardInterrupt()), [], prog="p") == 130
    assert capsys.readouterr().err == "p: interrupted\n"


def test_traceback_only_when_asked(monkeypatch):
    assert not want_traceback([])
    assert want_traceback(["--data", "x", "--verbose"])
    with pytest.raises(ValueError):  # --verbose: the exception propagates (full traceback)
        run_cli(raiser(ValueError("x")), ["--verbose"])
    monkeypatch.setenv("MOY_TRACEBACK", "0")
    assert run_cli(raiser(ValueError("x")), []) == 2
    monkeypatch.setenv("MOY_TRACEBACK", "1")
    assert want_traceback([])
    with pytest.raises(ValueError):
        run_cli(raiser(ValueError("x")), [])


def test_prog_defaults_to_script_name(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/some/dir/export.py", "--x"])
    run_cli(raiser(UserError("bad")), None)
    assert capsys.readouterr().err == "export.py: error: bad\n"


def test_subprocess_one_line_no_traceback(tmp_path):
    script = tmp_path / "tool.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from utils.cli import run_cli
        def main(argv):
            open({str(tmp_path / 'missing.txt')!r})
        sys.exit(run_cli(main))
    """))
    env = {k: v for k, v in os.environ.items() if k != "MOY_TRACEBACK"}
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"tool.py: error: {tmp_path / 'missing.txt'}: No such file or directory"]
    r = subprocess.run([sys.executable, str(script), "--verbose"], capture_output=True, text=True, env=env,
                       timeout=60)
    assert r.returncode != 0 and "Traceback" in r.stderr
