"""The examples take --epochs; the fine-tuning example trains an exported run folder and its new
weights load back into the same model.py."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = sorted(p.name for p in (ROOT / "examples").glob("*.py"))


def test_there_are_examples():
    assert {"prune_resnet_digits.py", "finetune_exported.py"} <= set(EXAMPLES)


@pytest.mark.parametrize("name", EXAMPLES)
def test_every_example_takes_epochs(name):
    p = subprocess.run([sys.executable, str(ROOT / "examples" / name), "--help"], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert "--epochs" in p.stdout


def test_finetune_example_trains_the_export_and_reloads(tmp_path):
    from otonas.search import SearchConfig, search

    out = tmp_path / "run"
    search(SearchConfig(out=str(out), model="search_spaces:resnet20", model_kwargs={"size": "tiny"}, mode="prune",
                        batch_size=256, epochs=2, progress=False))
    p = subprocess.run([sys.executable, str(ROOT / "examples" / "finetune_exported.py"), "--run", str(out),
                        "--epochs", "1"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "epoch 1: loss" in p.stdout
    from safetensors.torch import load_file

    import otonas

    old, new = load_file(str(out / "model.safetensors")), load_file(str(out / "model.finetuned.safetensors"))
    assert old.keys() == new.keys() and all(old[k].shape == new[k].shape for k in old)  # same structure
    assert any(not torch.equal(old[k], new[k]) for k in old)  # the weights trained
    bn = [k for k in old if k.endswith("running_mean")]
    assert bn and any(not torch.equal(old[k], new[k]) for k in bn)  # BatchNorm statistics updated in train()
    net = otonas.load(out / "model.finetuned.safetensors")
    assert all(torch.equal(v, new[k]) for k, v in net.state_dict().items())
    assert json.loads((out / "report.json").read_text())["params_after"] == sum(p.numel() for p in net.parameters())


def test_prune_llm_example_prunes_in_place_and_generates_as_before():
    p = subprocess.run([sys.executable, str(ROOT / "examples" / "prune_llm.py"), "--epochs", "1",
                        "--steps-per-epoch", "6", "--corpus-mb", "0.3", "--batch", "4", "--seq", "64"],
                       capture_output=True, text=True, timeout=600, env={**os.environ,
                                                                          "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    assert "pruned in place" in p.stdout and "fewer" in p.stdout
    assert "(the same as before the build)" in p.stdout, p.stdout


def test_stdlib_text_splits_by_file():
    from otonas.testing import stdlib_text

    train, val = stdlib_text(200_000, val_every=5)
    assert train.dtype == torch.int64 and 0 <= int(train.min()) and int(train.max()) < 256
    assert len(val) > 0 and 2 * len(val) < len(train)
    text = bytes(train[:2000].tolist()).decode("utf-8", "replace")
    assert "import" in text or "def " in text
