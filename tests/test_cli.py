"""The command line: JSON keys, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

KEYS = {"model", "groups", "prunable_groups", "zeroed_groups", "params_before", "params_after", "flops_before",
        "flops_after", "max_abs_diff", "max_rel_diff", "passed", "pinned"}


def run(*args):
    return subprocess.run([sys.executable, "-m", "otonas", *args], capture_output=True, text=True, timeout=300)


def test_verify_json_on_a_search_space_entry():
    p = run("verify", "search_spaces:resnet20", "--model-kwargs", '{"size": "tiny"}', "--json")
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    assert KEYS <= set(report)
    assert report["passed"] is True
    assert report["params_after"] < report["params_before"]
    assert report["max_rel_diff"] <= 1e-4
    assert all({"op", "node", "reason"} <= set(pin) for pin in report["pinned"])


def test_verify_custom_callable_with_input_shape(tmp_path, monkeypatch):
    (tmp_path / "mymodels.py").write_text(
        "import torch.nn as nn\n"
        "def net(width=8):\n"
        "    return nn.Sequential(nn.Linear(5, width), nn.ReLU(), nn.Linear(width, 3))\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    p = run("verify", "mymodels:net", "--model-kwargs", '{"width": 16}', "--input-shape", "4,5")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "PASSED" in p.stdout


@pytest.mark.parametrize("gqa", ["kv", "query"])
def test_verify_takes_the_gqa_granularity(gqa, tmp_path, monkeypatch):
    (tmp_path / "mymodels.py").write_text(
        "import torch.nn as nn, torch.nn.functional as F\n"
        "class Att(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.q, self.k, self.v = nn.Linear(16, 32), nn.Linear(16, 8), nn.Linear(16, 8)\n"
        "        self.o = nn.Linear(32, 3)\n"
        "    def forward(self, x):\n"
        "        b, s, _ = x.shape\n"
        "        q, k, v = (p(x).view(b, s, -1, 4).transpose(1, 2) for p in (self.q, self.k, self.v))\n"
        "        y = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)\n"
        "        return self.o(y.transpose(1, 2).reshape(b, s, -1))\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    p = run("verify", "mymodels:Att", "--input-shape", "2,5,16", "--gqa", gqa, "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    report = json.loads(p.stdout)
    assert report["passed"] is True
    assert any("gqa='query'" in pin["reason"] for pin in report["pinned"]) == (gqa == "query")


@pytest.mark.parametrize("args,needle", [
    (["verify", "torchvision:not_a_model"], "torchvision has no model 'not_a_model'"),
    (["verify", "search_spaces:resnet20", "--model-kwargs", '{"size": "tiny"}', "--input-shape", "2,3,5"],
     "does not fit"),
    (["verify", "nosuchpackage.mod:fn"], "cannot import module 'nosuchpackage.mod'"),
    (["verify", "plainstring"], "is not of the form"),
    (["verify", "search_spaces:resnet20", "--fraction", "1.5"], "--fraction 1.5"),
    (["verify", "search_spaces:resnet20", "--model-kwargs", "{oops"], "--model-kwargs is not valid JSON"),
])
def test_bad_input_is_one_line_and_exit_2(args, needle):
    p = run(*args)
    assert p.returncode == 2
    assert needle in p.stderr
    assert "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_model_that_does_not_export_is_exit_2(tmp_path, monkeypatch):
    (tmp_path / "badmodels.py").write_text(
        "import torch, torch.nn as nn\n"
        "class Bad(nn.Module):\n"
        "    def forward(self, x):\n"
        "        return x * 2 if x.sum().item() > 0 else x\n"
        "def bad():\n"
        "    return Bad()\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    p = run("verify", "badmodels:bad", "--input-shape", "2,3")
    assert p.returncode == 2
    assert "torch.export could not capture Bad" in p.stderr
    assert "Traceback" not in p.stderr


def test_nothing_prunable_fails_naming_the_pin(tmp_path, monkeypatch):
    (tmp_path / "flat.py").write_text(
        "import torch.nn as nn\n"
        "def one_layer():\n"
        "    return nn.Linear(4, 3)\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    p = run("verify", "flat:one_layer", "--input-shape", "2,4")
    assert p.returncode == 1
    assert "nothing in flat:one_layer is prunable" in p.stdout and "model output" in p.stdout


def test_analyze_prints_the_families():
    p = run("analyze", "search_spaces:resnet20", "--model-kwargs", '{"size": "tiny"}', "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["prunable_groups"] > 0 and out["families"]


def test_version_flag():
    import otonas

    p = run("--version")
    assert p.returncode == 0 and p.stdout.strip() == f"otonas {otonas.__version__}"


def test_a_warning_is_one_line_without_the_source(tmp_path, monkeypatch):
    (tmp_path / "warny.py").write_text(
        "import warnings\n"
        "import torch.nn as nn\n"
        "def net():\n"
        "    warnings.warn('this net is\\nexperimental', UserWarning)\n"
        "    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    p = run("analyze", "warny:net", "--input-shape", "2,4")
    assert p.returncode == 0, p.stderr
    assert p.stderr.strip() == "otonas: warning: this net is experimental"
