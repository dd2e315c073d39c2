"""The budget space: parsing, ranges, stages."""

from __future__ import annotations

import optuna
import pytest
import torch

import otonas
import search_spaces
from otonas import UsageError
from otonas.analysis import group_stages, stage_of
from otonas.tuning import BudgetSpace


def test_stage_of_names():
    from otonas._torchvision import import_torchvision

    tv = import_torchvision()
    r18 = tv.models.resnet18()
    assert stage_of(r18, "layer2.0.conv1.weight") == "layer2"
    assert stage_of(r18, "conv1.weight") == "conv1"
    assert stage_of(r18, "fc.weight") == "fc"
    assert stage_of(tv.models.vgg11(), "features.3.weight") == "features"
    r20 = search_spaces.create("resnet20", size="tiny", in_chans=1, num_classes=10)
    assert stage_of(r20, "stages.0.1.conv1.weight") == "stages.0"


def test_group_stages_partition_the_prunable_groups():
    m = search_spaces.create("resnet20", size="tiny", in_chans=1, num_classes=10)
    space = otonas.analyze(m, (torch.randn(2, 1, 8, 8),))
    stages = group_stages(space)
    assert list(stages)[:2] == ["stem", "stages.0"]
    assert {"stages.1", "stages.2"} <= set(stages)
    every = sorted(g for members in stages.values() for g in members)
    assert every == list(range(space.num_prunable_groups))  # each group in exactly one stage


def test_budget_file(tmp_path):
    p = tmp_path / "b.toml"
    p.write_text('sparsity = [0.2, 0.6]\nerase = [0.1, 0.3]\nper = "stage"\nstep = 0.1\n'
                 '[stages]\n"stages.0" = [0.0, 0.2]\n')
    s = BudgetSpace.load(str(p))
    assert s.sparsity == (0.2, 0.6) and s.erase == (0.1, 0.3) and s.per == "stage" and s.step == 0.1
    study = optuna.create_study()
    trial = study.ask()
    sparsity, erase = s.suggest(trial, prune=True, erase=True, stages={"stem": [0], "stages.0": [1]})
    assert set(sparsity) == {"stem", "stages.0"}
    assert 0.0 <= sparsity["stages.0"] <= 0.2 and 0.2 <= sparsity["stem"] <= 0.6 and 0.1 <= erase <= 0.3
    assert abs(sparsity["stem"] * 10 - round(sparsity["stem"] * 10)) < 1e-9  # on the 0.1 grid
    assert set(trial.params) == {"sparsity:stem", "sparsity:stages.0", "erase"}


@pytest.mark.parametrize("text, words", [
    ("sparsity = [0.5, 0.2]", "low <= high"),
    ("sparsity = 0.5", "[low, high]"),
    ("erase = [0.0, 1.0]", "< 1"),
    ("per = 'layer'", "global"),
    ("budget = [0.1, 0.2]", "unknown key 'budget'"),
    ("step = 2", "step"),
    ("[stages]\n'x' = [0.1, 0.2]", "per = \"stage\""),
])
def test_bad_budget_files_name_the_culprit(tmp_path, text, words):
    p = tmp_path / "b.toml"
    p.write_text(text)
    with pytest.raises(UsageError, match=None) as e:
        BudgetSpace.load(str(p))
    assert words in str(e.value) and "b.toml" in str(e.value)


def test_unknown_stage_is_refused():
    s = BudgetSpace.from_dict({"per": "stage", "stages": {"layer9": [0.1, 0.2]}})
    with pytest.raises(UsageError, match="layer9.*stem"):
        s.check_stages({"stem": [0], "stages.0": [1]})


def test_flops_range_replaces_the_sparsity_draw():
    space = BudgetSpace.from_dict({"flops": [0.2, 0.6]})
    assert space.flops == (0.2, 0.6) and space.to_dict()["flops"] == [0.2, 0.6]
    study = optuna.create_study()
    trial = study.ask()
    space.suggest(trial, prune=True, erase=False, stages={})
    assert set(trial.params) == {"flops"} and 0.2 <= trial.params["flops"] <= 0.6
    for bad in ([0.0, 0.5], [0.6, 0.2], [0.2, 1.5], "0.5"):
        with pytest.raises(UsageError, match="flops"):
            BudgetSpace.from_dict({"flops": bad})
    with pytest.raises(UsageError, match="global"):
        BudgetSpace.from_dict({"flops": [0.2, 0.6], "per": "stage"})
