"""`otonas search` and its run folder: the lock, finished runs, --overwrite, --resume from the
checkpoint's options, the interrupt hint, --quiet and the output on a pipe."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

TINY = ["--model", "search_spaces:resnet20", "--model-kwargs", '{"size": "tiny"}', "--mode", "prune",
        "--batch-size", "256"]


def _sigint_default() -> None:
    # a shell that starts the tests in the background makes its children ignore SIGINT
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def otonas(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "otonas", *args], capture_output=True, text=True, timeout=timeout,
                          preexec_fn=_sigint_default)


def _lock(folder, pid: int) -> dict:
    holder = {"pid": pid, "host": socket.gethostname(), "started": time.time(), "time": "now",
              "command": "otonas search"}
    os.makedirs(folder, exist_ok=True)
    (folder / ".lock").write_text(json.dumps(holder))
    return holder


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 1-epoch run, started over a stale lock (a dead pid), its stderr a pipe."""
    out = tmp_path_factory.mktemp("finished") / "run"
    _lock(out, _dead_pid())
    (out / "notes.txt").write_text("mine")
    p = otonas("search", *TINY, "--epochs", "1", "--out", str(out))
    assert p.returncode == 0, p.stderr
    return out, p


def test_version():
    from importlib.metadata import version

    p = otonas("--version")
    assert p.returncode == 0 and p.stdout.strip() == f"otonas {version('otonas')}"


def test_busy_folder_exits_2_naming_the_holder(tmp_path):
    holder = _lock(tmp_path, os.getpid())  # this test's process is alive: the folder is busy
    p = otonas("search", *TINY, "--epochs", "1", "--no-progress", "--out", str(tmp_path), timeout=120)
    assert p.returncode == 2, p.stderr
    err = p.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert str(tmp_path) in err and f"pid {os.getpid()}" in err and holder["host"] in err
    assert "another --out" in err and os.path.join(str(tmp_path), ".lock") in err
    assert json.loads((tmp_path / ".lock").read_text()) == holder  # not taken, not removed
    assert not (tmp_path / "checkpoint").exists()


def test_stale_lock_is_taken_over_and_released(finished):
    out, _ = finished
    assert (out / "report.json").exists()
    assert not (out / ".lock").exists()


def test_piped_progress_is_one_plain_line_per_epoch(finished):
    _, p = finished
    assert "\r" not in p.stderr and "\r" not in p.stdout
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert re.fullmatch(r"epoch 1/1: loss \d+\.\d+, val acc \d\.\d+, FLOPs kept \d+\.\d%", lines[0]), lines[0]


def test_finished_folder_is_refused_without_resume_or_overwrite(finished):
    out, _ = finished
    before = (out / "report.json").stat().st_mtime_ns
    p = otonas("search", *TINY, "--epochs", "1", "--no-progress", "--out", str(out), timeout=120)
    assert p.returncode == 2, p.stderr
    err = p.stderr.strip()
    assert len(err.splitlines()) == 1 and "--overwrite" in err and "--resume" in err and str(out) in err
    assert (out / "report.json").stat().st_mtime_ns == before
    assert not (out / ".lock").exists()


def test_resume_with_a_changed_option_names_it_with_both_values(finished):
    out, _ = finished
    p = otonas("search", "--resume", "--out", str(out), "--lr", "0.3", timeout=120)
    assert p.returncode == 2, p.stderr
    err = p.stderr.strip()
    assert len(err.splitlines()) == 1
    assert "--lr 0.1" in err and "--lr 0.3" in err  # stored (the default), given


def test_overwrite_starts_anew_keeps_user_files_and_quiet_is_short(finished, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished[0], out)
    (out / "checkpoint" / "run.json").write_text(json.dumps({"epoch": 1, "config": {"epochs": 1}}))
    p = otonas("search", *TINY, "--epochs", "1", "--lr", "0.05", "--overwrite", "--quiet", "--out", str(out))
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    assert len(p.stdout.strip().splitlines()) == 5 and p.stdout.startswith("accuracy")
    assert (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "report.json").read_text())["config"]["lr"] == 0.05
    assert json.loads((out / "checkpoint" / "run.json").read_text())["config"]["lr"] == 0.05
    assert not (out / ".lock").exists()


def test_resume_alone_finishes_an_interrupted_non_default_run(tmp_path):
    out = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "otonas", "search", *TINY, "--epochs", "2", "--lr", "0.2",
                          "--seed", "4", "--no-progress", "--out", str(out)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_sigint_default)
    run_json = out / "checkpoint" / "run.json"
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None:
        if run_json.exists() and json.loads(run_json.read_text())["epoch"] >= 1:
            break
        time.sleep(0.1)
    assert p.poll() is None, "the run ended before it could be interrupted"
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert not (out / ".lock").exists()
    hint = err.strip().splitlines()[-1]
    cmd = shlex.split(hint.split("to continue: ", 1)[1])
    assert cmd == ["otonas", "search", "--resume", "--out", str(out)]

    q = otonas(*cmd[1:])  # exactly as printed
    assert q.returncode == 0, q.stderr
    report = json.loads((out / "report.json").read_text())
    cfg = report["config"]
    assert (cfg["lr"], cfg["epochs"], cfg["seed"], cfg["model"], cfg["model_kwargs"]) == (
        0.2, 2, 4, "search_spaces:resnet20", {"size": "tiny"})
    assert cfg["progress"] is False  # stored, not given again
    assert len(json.loads(run_json.read_text())["history"]) == 2
