"""The prepared GPU script still runs against today's API: its CPU smoke mode, end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_cpu_smoke_passes_every_check() -> None:
    """bench/gpu_check.py is run only when a GPU is lent; its CPU smoke mode runs the same checks
    small, so a change to the optimizers or the builder that breaks the script shows up here."""
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--cpu-smoke", "--skip-timing"],
                       capture_output=True, text=True, timeout=600, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-3000:]
    assert " 0 failed" in out and "| FAIL |" not in out, out[-3000:]
    assert " passed" in out
