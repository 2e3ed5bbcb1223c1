"""Ctrl-C while ``tagtune`` is still importing (torch alone takes seconds) ends it in one line,
never a traceback of the import it cut short."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def _mapped(pid: int, lib: str) -> bool:
    try:
        return lib in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/maps")
@pytest.mark.parametrize("command", ["script", "module"])
def test_ctrl_c_during_the_imports_is_one_line_no_traceback(command, data_file, tmp_path):
    script = shutil.which("tagtune", path=str(Path(sys.executable).parent))
    # A run: what imports torch (--help and the declarations no longer do).
    args = ["train", "--data", str(data_file), "--method", "b1", "--epochs", "1",
            "--out", str(tmp_path / "run"), "--no-progress"]
    argv = [script, *args] if command == "script" else [sys.executable, "-m", "tagtune", *args]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Once torch's library is mapped the import of torch is under way: interrupt it there.
    deadline = time.monotonic() + 60
    while not _mapped(proc.pid, "libtorch") and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "the command ended before torch was imported"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert "Traceback" not in err, err
    assert err.strip() in ("interrupted", "Aborted!", ""), err  # "" / Aborted!: it was past the imports
    assert len(err.strip().splitlines()) <= 1
