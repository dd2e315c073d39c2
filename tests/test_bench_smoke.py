"""The prepared GPU script still runs against today's API: its CPU smoke mode, end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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


def _quality(tmp: Path, jobs: int) -> list[dict[str, object]]:
    out = tmp / f"q{jobs}.json"
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_quality.py"), "--quick", "--data", "digits",
                        "--models", "resnet20-tiny", "--methods", "otonas,random_train", "--jobs", str(jobs),
                        "--out", str(out)],
                       capture_output=True, text=True, timeout=600, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    import json

    runs: list[dict[str, object]] = json.loads(out.read_text())["runs"]
    return sorted(runs, key=lambda r: (str(r["method"]), float(r["flops_target"])))  # type: ignore[arg-type]


def test_quality_bench_runs_alike_in_one_process_and_in_two(tmp_path: Path) -> None:
    """bench_quality.py's quick grid: every run at its FLOPs target, otonas forcing nothing, and
    ``--jobs 2`` (two worker processes) giving the same results, run for run, as ``--jobs 1``."""
    one, two = _quality(tmp_path, 1), _quality(tmp_path, 2)
    assert [(r["method"], r["flops_target"]) for r in one] == [
        ("otonas", 0.25), ("otonas", 0.5), ("random_train", 0.25), ("random_train", 0.5)]
    for r in one:
        assert float(r["flops_kept"]) <= float(r["flops_target"]) + 0.01  # type: ignore[arg-type]
        assert r["forced_groups"] == (0 if r["method"] == "otonas" else None)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in one]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in two]


FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not (FASHION / "train-images-idx3-ubyte.gz").is_file(),
                    reason=f"Fashion-MNIST not in {FASHION}: `apt-get install dataset-fashion-mnist` (.ci/run does)")
def test_schedule_bench_quick_runs_the_window_and_the_baseline(tmp_path: Path) -> None:
    """bench_schedule.py --quick: the default window and random_train at both FLOPs targets, scored on
    the validation split (drawn outside the training images: the script asserts it), otonas forcing
    nothing and keeping its FLOPs target."""
    out = tmp_path / "s.json"
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_schedule.py"), "--quick", "--out", str(out)],
                       capture_output=True, text=True, timeout=600, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    import json

    runs = json.loads(out.read_text())["runs"]
    assert sorted((r["config"], r["target"]) for r in runs) == [
        ("random_train", 0.25), ("random_train", 0.5), ("w10-e30-p5", 0.25), ("w10-e30-p5", 0.5)]
    for r in runs:
        assert r["flops_kept"] <= r["target"] + 0.01
        assert 0.0 <= r["val_accuracy"] <= 100.0
        if r["config"] != "random_train":
            assert r["forced_groups"] == 0
    assert "| 0.5 | w10-e30-p5 (0.1:0.3:5) |" in p.stdout
