"""Every model of the verify set, exported and loaded back in a Python without otonas: the
generated model.py reproduces the subnet's outputs at batch sizes 1 and 3."""

from __future__ import annotations

from pathlib import Path

import pytest

import search_spaces
from export_helpers import export_for_plain, run_plain
from otonas._torchvision import import_torchvision
from tiny_models import CASES

# search_spaces entries whose tiny analysis takes a few seconds run with -m slow only
SLOW_SPACES = {"carn", "darts", "densenet121", "resnet18", "resnet50", "resnet56"}
FAST_SPACES = [n for n in search_spaces.list() if n not in SLOW_SPACES]
# torchvision models and the image size they are exported at (ViT needs its own 224)
TV_FAST = {"resnet18": 64, "mobilenet_v3_small": 64, "shufflenet_v2_x1_0": 64, "regnet_y_400mf": 64,
           "efficientnet_b0": 64}
TV_SLOW = {"vit_b_16": 224, "convnext_tiny": 64, "swin_t": 224, "densenet121": 64}


def _space_entry(name: str):
    info = search_spaces.info(name)
    return search_spaces.create(name, size="tiny"), [(2, *info.tiny_input_shape)], info.input_dtype


def _tv_entry(name: str, size: int):
    import torch

    tv = import_torchvision()
    return tv.models.get_model(name, weights=None), [(2, 3, size, size)], torch.float32


def _manifest(out: Path, names: list[str], slow: bool) -> list[dict]:
    items = []
    for name in names:
        kind, _, model_name = name.partition(":")
        if kind == "tiny":
            factory, shapes, dtype = next((f, s, d) for n, f, s, d in CASES if n == model_name)
            model = factory()
        elif kind == "space":
            model, shapes, dtype = _space_entry(model_name)
        else:
            model, shapes, dtype = _tv_entry(model_name, (TV_SLOW if slow else TV_FAST)[model_name])
        items.append(export_for_plain(name.replace(":", "-"), model, shapes, dtype, out, vocab=10))
    return items


FAST = [f"tiny:{c[0]}" for c in CASES] + [f"space:{n}" for n in FAST_SPACES] + [f"tv:{n}" for n in TV_FAST]
SLOW = [f"space:{n}" for n in sorted(SLOW_SPACES)] + [f"tv:{n}" for n in TV_SLOW]


@pytest.fixture(scope="module")
def fast_results(tmp_path_factory, plain_python):
    out = tmp_path_factory.mktemp("exports")
    return run_plain(plain_python, _manifest(out, FAST, slow=False), out)


@pytest.fixture(scope="module")
def slow_results(tmp_path_factory, plain_python):
    out = tmp_path_factory.mktemp("exports-slow")
    return run_plain(plain_python, _manifest(out, SLOW, slow=True), out)


def _check(results: dict, name: str) -> None:
    entry = results[name.replace(":", "-")]
    assert entry["ok"], entry.get("error")
    assert entry["imports"] == [], f"model.py pulled in {entry['imports']}"
    assert len(entry["diffs"]) == 2  # batch sizes 1 and 3
    assert max(entry["diffs"]) <= 1e-4, entry["diffs"]


@pytest.mark.parametrize("name", FAST)
def test_model_py_reproduces_the_subnet_without_otonas(fast_results, name):
    _check(fast_results, name)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_model_py_reproduces_the_subnet_without_otonas_slow(slow_results, name):
    _check(slow_results, name)
