"""The search_spaces registry: names, info records, creation, overwrite warning,
parameter counts against the registry and against the papers' figures."""

from __future__ import annotations

import ast
import dataclasses
import pathlib

import pytest
import torch
from torch import nn

import search_spaces
from search_spaces import _registry

EXPECTED = {
    "carn", "convnext_tiny", "darts", "demosupnet", "densenet121", "resnet18", "resnet20",
    "resnet50", "resnet56", "stackedunets", "superresnet", "transformer", "vgg16_bn",
}
TINY_LIMIT = 30_000


@pytest.fixture(autouse=True)
def _one_thread():
    """OpenMP spin-waiting makes two threads slow when the 2-core machine is shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_list_holds_every_entry_sorted():
    names = search_spaces.list()
    assert isinstance(names, list)
    assert names == sorted(names)
    assert EXPECTED <= set(names)


def test_public_api():
    assert set(search_spaces.__all__) >= {"create", "list", "info", "register"}
    for name in ("create", "list", "info", "register"):
        assert callable(getattr(search_spaces, name))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_info_is_a_frozen_record(name):
    entry = search_spaces.info(name)
    assert entry.name == name
    assert entry.kind in ("supernet", "network")
    assert all(isinstance(d, int) and d > 0 for d in entry.input_shape)
    assert all(isinstance(d, int) and d > 0 for d in entry.tiny_input_shape)
    assert entry.input_dtype in (torch.float32, torch.int64)
    assert entry.output and entry.source
    assert entry.default_params > entry.tiny_params > 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.name = "other"  # type: ignore[misc]


def test_supernets_and_networks():
    kinds = {n: search_spaces.info(n).kind for n in search_spaces.list()}
    assert {n for n, k in kinds.items() if k == "supernet"} >= {
        "darts", "demosupnet", "superresnet", "stackedunets", "carn"}
    assert kinds["transformer"] == "network"
    assert search_spaces.info("transformer").input_dtype == torch.int64


def test_unknown_name_raises_with_suggestion():
    with pytest.raises(KeyError, match="resnet20"):
        search_spaces.create("resnet2O")
    with pytest.raises(KeyError):
        search_spaces.info("no_such_net")


@pytest.mark.parametrize("name", ["resnet20", "darts", "transformer"])
def test_unknown_size_raises(name):
    with pytest.raises(ValueError, match="size"):
        search_spaces.create(name, size="huge")


def test_register_warns_on_overwrite():
    name = "_test_overwrite_entry"
    meta = dict(kind="network", input_shape=(4,), output="(2,)", source="test",
                default_params=10, tiny_params=10)
    try:
        search_spaces.register(name, **meta)(lambda size="default": nn.Linear(4, 2))
        assert name in search_spaces.list()
        with pytest.warns(UserWarning, match="registered again"):
            search_spaces.register(name, **meta)(lambda size="default": nn.Linear(4, 3))
        assert search_spaces.create(name).out_features == 3
    finally:
        _registry._ENTRIES.pop(name, None)
    assert name not in search_spaces.list()


def test_register_rejects_unknown_kind():
    with pytest.raises(ValueError):
        search_spaces.register("_bad", kind="other", input_shape=(1,), output="-", source="-",
                               default_params=1, tiny_params=1)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_registered_param_counts_are_measured(name):
    entry = search_spaces.info(name)
    assert n_params(search_spaces.create(name)) == entry.default_params
    assert n_params(search_spaces.create(name, size="tiny")) == entry.tiny_params


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_tiny_is_tiny(name):
    assert search_spaces.info(name).tiny_params < TINY_LIMIT


@pytest.mark.parametrize(
    "name, paper",
    [("vgg16_bn", 15.25e6), ("resnet18", 11.17e6), ("resnet50", 23.52e6),
     ("resnet20", 0.27e6), ("resnet56", 0.85e6)],
)
def test_default_counts_match_the_papers(name, paper):
    count = n_params(search_spaces.create(name, num_classes=10))
    assert abs(count - paper) / paper < 0.10, f"{name}: {count} vs paper {paper}"


def test_package_is_plain_pytorch():
    """search_spaces stands for user models: it must not import otonas."""
    root = pathlib.Path(search_spaces.__file__).parent
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mods = [node.module or ""] if node.level == 0 else []
            else:
                continue
            for mod in mods:
                assert mod.split(".")[0] not in ("otonas", "torchvision", "timm"), f"{path.name}: {mod}"


@pytest.mark.slow
def test_cli_table_check():
    from search_spaces.__main__ import main

    assert main(["--check"]) == 0
