"""Shared set-up for the tune tests: a study small enough to run trials in seconds."""

from __future__ import annotations

import os
import subprocess
import sys

COMMON = ["--model", "search_spaces:resnet20", "--data", "synthetic", "--trial-epochs", "3", "--lr", "0.1",
          "--batch-size", "128", "--no-progress", "--objectives", "accuracy,flops"]


def tune_cmd(out, *extra: str) -> list[str]:
    return [sys.executable, "-m", "otonas", "tune", "--out", str(out), *COMMON, *extra]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return e


def run(cmd: list[str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env())
