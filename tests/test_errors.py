"""What a user can get wrong ends as one line ``otonas: error: ...`` with exit 2 (``--debug``
adds the traceback): OS errors, --config types, the user's constructor and imports, a model
that does not export, an unfinished run folder, data whose channels do not fit the model."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import pytest

import otonas
from otonas.cli import main

TINY = ["--model", "search_spaces:resnet20", "--model-kwargs", '{"size": "tiny"}', "--mode", "prune",
        "--batch-size", "256"]


def run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "otonas", *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd)


def one_error_line(p: subprocess.CompletedProcess | tuple[int, str]) -> str:
    code, err = (p.returncode, p.stderr) if isinstance(p, subprocess.CompletedProcess) else p
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("otonas: error: "), err
    assert "internal error" not in err and "Traceback" not in err
    return lines[0]


def in_process(capsys, *args: str) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().err


@pytest.fixture
def user_modules(tmp_path, monkeypatch):
    """A folder on PYTHONPATH (subprocesses) and sys.path (in-process) with the user's modules."""
    (tmp_path / "mynets.py").write_text(
        "import torch, torch.nn as nn\n"
        "def boom(depth=3):\n"
        "    raise ValueError(f'depth {depth} is not supported')\n"
        "def net(in_channels=3, num_classes=10):\n"
        "    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),\n"
        "                         nn.Flatten(), nn.Linear(8, num_classes))\n"
        "def fixed(num_classes=10):\n"
        "    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),\n"
        "                         nn.Flatten(), nn.Linear(8, num_classes))\n"
        "class Bad(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.l = nn.Linear(3, 3)\n"
        "    def forward(self, x):\n"
        "        x = self.l(x)\n"
        "        return x * 2 if x.sum().item() > 0 else x\n"
        "def bad():\n"
        "    return Bad()\n")
    (tmp_path / "raises_on_import.py").write_text("import torch\nraise RuntimeError('needs a GPU')\n")
    (tmp_path / "needs_dep.py").write_text("import torch\nimport otonas_no_such_dependency\n")
    (tmp_path / "broken_syntax.py").write_text("def f(:\n")
    (tmp_path / "uses_torchvision.py").write_text(  # as transformers does: torchvision at import time
        "import torchvision\n"
        "import torch.nn as nn\n"
        "def net():\n"
        "    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


# --- OS errors ----------------------------------------------------------------------------

@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into a read-only folder")
def test_read_only_out_is_one_line(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        line = one_error_line(run("search", *TINY, "--epochs", "1", "--out", str(ro / "run")))
    finally:
        ro.chmod(0o755)
    assert "permission denied" in line and str(ro) in line and "--out" in line


@pytest.mark.parametrize("code,needle", [
    (errno.EROFS, "read-only file system"),
    (errno.EACCES, "permission denied"),
])
def test_unwritable_out_names_the_path_and_the_fix(tmp_path, capsys, monkeypatch, code, needle):
    import otonas.search._run as run_mod

    lock = str(tmp_path / "run" / ".lock")

    def refuse(folder, command="otonas search"):
        raise OSError(code, os.strerror(code), lock)

    monkeypatch.setattr(run_mod, "folder_lock", refuse)
    line = one_error_line(in_process(capsys, "search", *TINY, "--out", str(tmp_path / "run")))
    assert line == (f"otonas: error: cannot write {lock!r}: it is on a read-only file system; pass an --out on a "
                    "writable disk" if code == errno.EROFS else
                    f"otonas: error: cannot access {lock!r}: permission denied; check its permissions, or pass an "
                    "--out folder you can write to")
    assert needle in line


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),  # a write to an open file: no path in the error
    RuntimeError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left" })'),
])
def test_disk_full_names_the_run_folder(tmp_path, capsys, monkeypatch, error):
    import otonas.search._run as run_mod

    def full(*args, **kwargs):
        raise error

    monkeypatch.setattr(run_mod, "_save_checkpoint", full)
    out = str(tmp_path / "run")
    line = one_error_line(in_process(capsys, "search", *TINY, "--epochs", "1", "--no-progress", "--out", out))
    assert line == (f"otonas: error: cannot write a file in {out!r}: no space left on the device; free some space "
                    "there or pass an --out on another disk")


def test_missing_folder_is_one_line(tmp_path):
    target = tmp_path / "no" / "such" / "graph.svg"
    line = one_error_line(run("show", "search_spaces:resnet20", "--model-kwargs", '{"size": "tiny"}',
                              "--out", str(target)))
    assert line == f"otonas: error: {str(target)!r} does not exist (or a folder above it does not); check the path"


def test_debug_adds_the_traceback(tmp_path):
    p = run("show", "search_spaces:resnet20", "--model-kwargs", '{"size": "tiny"}', "--out",
            str(tmp_path / "no" / "g.svg"), "--debug")
    assert p.returncode == 2 and "Traceback" in p.stderr and "FileNotFoundError" in p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith("otonas: error: ")


# --- --config types -----------------------------------------------------------------------

@pytest.mark.parametrize("toml,expected", [
    ('epochs = "2"\n', "key 'epochs' must be an integer, got \"2\" (a string); write epochs = 2"),
    ("lr = true\n", "key 'lr' must be a number, got true (a boolean)"),
    ('target-sparsity = "high"\n', "key 'target-sparsity' must be a number or a table of numbers, got \"high\" "
                                   "(a string)"),
    ("model = 3\n", "key 'model' must be a string, got 3 (an integer)"),
])
def test_config_value_of_the_wrong_type_names_key_type_and_value(tmp_path, toml, expected):
    cfg = tmp_path / "search.toml"
    cfg.write_text(toml)
    line = one_error_line(run("search", "--config", str(cfg), "--out", str(tmp_path / "run")))
    assert line == f"otonas: error: --config {str(cfg)!r}: {expected}"
    assert not (tmp_path / "run").exists()


def test_tune_search_table_types_are_checked(tmp_path):
    cfg = tmp_path / "tune.toml"
    cfg.write_text('trials = 2\n[search]\nbatch_size = "64"\n')
    line = one_error_line(run("tune", "--config", str(cfg), "--out", str(tmp_path / "t")))
    assert line == (f"otonas: error: --config {str(cfg)!r} [search]: key 'batch-size' must be an integer, "
                    "got \"64\" (a string); write batch-size = 64")


# --- the user's code ----------------------------------------------------------------------

def test_constructor_that_raises_names_the_model_and_the_exception(user_modules):
    line = one_error_line(run("verify", "mynets:boom", "--model-kwargs", '{"depth": 7}', "--input-shape", "2,3"))
    assert line == ("otonas: error: MODEL 'mynets:boom': boom(depth=7) raised ValueError: depth 7 is not supported "
                    "(rerun with --debug for the traceback)")
    p = run("verify", "mynets:boom", "--input-shape", "2,3", "--debug")
    assert "Traceback" in p.stderr and "mynets.py" in p.stderr  # the user's own frame is shown


def test_unknown_model_kwarg_is_still_named_as_such(user_modules):
    line = one_error_line(run("verify", "mynets:boom", "--model-kwargs", '{"width": 2}', "--input-shape", "2,3"))
    assert "does not accept --model-kwargs" in line and "width" in line


@pytest.mark.parametrize("module,needle", [
    ("raises_on_import", "importing module 'raises_on_import' failed at "),
    ("needs_dep", "importing module 'needs_dep' failed: ModuleNotFoundError: No module named "
                  "'otonas_no_such_dependency'; install 'otonas_no_such_dependency'"),
    ("broken_syntax", "importing module 'broken_syntax' failed at "),
])
def test_a_module_failing_to_import_is_one_line(user_modules, module, needle):
    line = one_error_line(run("verify", f"{module}:f", "--input-shape", "2,3"))
    assert needle in line
    if module == "raises_on_import":
        assert line.endswith("raises_on_import.py:2: RuntimeError: needs a GPU (rerun with --debug for the traceback)")
    if module == "broken_syntax":
        assert "broken_syntax.py:1: SyntaxError" in line


def test_a_module_importing_torchvision_first_works(user_modules):
    """The torchvision helper runs before the user's module is imported (transformers imports
    torchvision the same way); where the plain import fails, this is what makes it work."""
    p = run("analyze", "uses_torchvision:net", "--input-shape", "2,3,16,16", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["prunable_groups"] == 8  # the first conv's 8 output channels


def test_a_model_that_does_not_export_is_one_line_and_debug_shows_the_graph(user_modules):
    line = one_error_line(run("verify", "mynets:bad", "--input-shape", "2,3", "--quiet"))
    assert line.startswith("otonas: error: torch.export could not capture Bad: ")
    p = run("verify", "mynets:bad", "--input-shape", "2,3")  # the stage line, then the error: no graph
    assert p.stderr.strip().splitlines() == ["otonas: verify [1/5] capture: torch.export of mynets:bad", line]
    p = run("verify", "mynets:bad", "--input-shape", "2,3", "--debug")
    assert p.returncode == 2 and "def forward" in p.stderr and "Traceback" in p.stderr


# --- the data against the model -----------------------------------------------------------

@pytest.mark.parametrize("model,fix", [
    ("mynets:net", "pass --model-kwargs '{\"in_channels\": 1}'"),
    ("mynets:fixed", "pass the model's argument for its input channels, e.g. --model-kwargs '{\"in_chans\": 1}'"),
])
def test_input_channels_that_do_not_fit_the_data_name_the_fix(user_modules, tmp_path, model, fix):
    line = one_error_line(run("search", "--model", model, "--data", "digits", "--epochs", "1",
                              "--out", str(tmp_path / "run")))
    assert (f"otonas: error: MODEL {model!r} does not fit --data 'digits': the data has 1 input channel(s) (a batch "
            "is 2,1,8,8), the model's first layer 0 (Conv2d) expects 3; ") in line
    assert fix in line


def test_fitting_channels_pass_the_check(user_modules, tmp_path):
    p = run("search", "--model", "mynets:net", "--model-kwargs", '{"in_channels": 1}', "--data", "digits",
            "--epochs", "1", "--batch-size", "512", "--quiet", "--out", str(tmp_path / "run"))
    assert p.returncode == 0, p.stderr
    assert json.loads((tmp_path / "run" / "report.json").read_text())["model"] == "mynets:net"


# --- the run folder -----------------------------------------------------------------------

def test_unfinished_run_needs_resume_or_overwrite(tmp_path):
    out = tmp_path / "run"
    (out / "checkpoint").mkdir(parents=True)
    (out / "checkpoint" / "run.json").write_text(json.dumps({"epoch": 1, "folder": "epoch-0001", "history": [],
                                                             "config": {"epochs": 3}}))
    line = one_error_line(run("search", *TINY, "--epochs", "3", "--out", str(out)))
    assert line == (f"otonas: error: {out} holds an unfinished run (checkpoint at epoch 1 of 3); pass --resume to "
                    "continue it, or --overwrite to start again (removes otonas's files only)")
    assert not (out / ".lock").exists()


# --- verify's stages and the error classes ------------------------------------------------

def test_verify_reports_its_stages_on_stderr_unless_quiet():
    args = ["verify", "search_spaces:resnet20", "--model-kwargs", '{"size": "tiny"}']
    p = run(*args)
    assert p.returncode == 0, p.stderr
    stages = [line.split("] ")[1].split(":")[0] for line in p.stderr.strip().splitlines()]
    assert stages == ["capture", "analyze", "zero", "build", "compare"]
    assert p.stderr.startswith("otonas: verify [1/5] capture: torch.export of search_spaces:resnet20")
    assert "PASSED" in p.stdout
    q = run(*args, "--quiet")
    assert q.returncode == 0 and q.stderr == ""
    # --quiet changes stderr only; the measured lines (timings, and the float error of the
    # comparison, which parallel CPU kernels do not make bit-reproducible) may differ
    assert _unmeasured(q.stdout) == _unmeasured(p.stdout)
    assert [line.split()[0] for line in q.stdout.splitlines()] == [line.split()[0] for line in p.stdout.splitlines()]


def _unmeasured(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith(("time", "max abs diff", "max rel diff"))]


def test_error_classes_are_exported():
    import otonas.errors

    errors = [n for n in otonas.errors.__all__ if not issubclass(getattr(otonas.errors, n), Warning)]
    assert len(errors) == 8
    for name in errors:
        cls = getattr(otonas, name)
        assert issubclass(cls, otonas.OtonasError) and name in otonas.__all__
    assert issubclass(otonas.BusyError, otonas.OtonasError)
