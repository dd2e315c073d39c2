"""Latency as a cost: the cached per-layer table, the estimate, DHSPG's target_latency, the
search's --target-latency and its report, the errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import otonas
from otonas import OtonasError
from otonas.latency import LatencyModel, LatencyTable, LayerShape, LayerTimes
from otonas.optim import DHSPG


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.ReLU(),
                         nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 10)).eval()


@pytest.fixture
def space():
    torch.manual_seed(0)
    return otonas.analyze(_net(), (torch.randn(2, 3, 16, 16),))


def test_the_table_is_cached_and_a_second_model_measures_nothing(space, tmp_path):
    first = LatencyModel(space, cache_dir=str(tmp_path), num_threads=1)
    assert first.table.measured > 0 and first.table.measured_models == 1
    assert first.table.path is not None and os.path.exists(first.table.path)
    assert first.info()["layers"] == 5  # three convolutions (one depthwise), two linear layers
    again = LatencyModel(space, cache_dir=str(tmp_path), num_threads=1)
    assert again.table.measured == 0 and again.table.measured_models == 0
    assert again.dense_seconds == first.dense_seconds
    assert again.seconds() == pytest.approx(first.seconds())
    # another setting is another file, measured anew
    other = LatencyModel(space, cache_dir=str(tmp_path), num_threads=1, batch=3)
    assert other.table.path != first.table.path and other.table.measured > 0


def test_the_estimate_is_the_measured_dense_and_monotone_in_kept_channels(space, tmp_path):
    lm = LatencyModel(space, cache_dir=str(tmp_path), num_threads=1)
    assert lm.seconds() == pytest.approx(lm.dense_seconds)
    assert lm.fraction() == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    order = rng.permutation(space.num_prunable_groups)
    removed = np.zeros(space.num_prunable_groups, dtype=bool)
    last = lm.seconds(removed)
    for g in order:  # removing one more group never makes the estimate slower
        removed[g] = True
        now = lm.seconds(removed)
        assert now <= last + 1e-12
        last = now
    assert last < lm.dense_seconds


def test_layer_times_are_monotone_even_when_the_measurements_are_not():
    noisy = [[1.0, 3.0, 2.0], [0.5, 4.0, 3.5], [2.0, 2.5, 6.0]]  # a dip on both axes
    t = LayerTimes([4, 8, 16], [4, 8, 16], noisy)
    widths = np.linspace(0, 16, 33)
    for ci in widths:
        row = [t(ci, co) for co in widths]
        assert all(b >= a - 1e-12 for a, b in zip(row, row[1:]))
    for co in widths:
        col = [t(ci, co) for ci in widths]
        assert all(b >= a - 1e-12 for a, b in zip(col, col[1:]))
    assert t(0, 0) == 0.0 and t(16, 16) == 6.0


def test_layer_shape_grid_respects_what_an_axis_can_keep():
    s = LayerShape("conv2d", 1, 3, 64, 3, 1, spatial=(8, 8), kernel=(3, 3))
    ins, outs = s.points()
    assert ins == [3] and outs == [16, 32, 48, 64]
    with pytest.raises(OtonasError, match="kind"):
        LayerShape("conv3d", 1, 3, 64, 3, 1)


def test_dhspg_meets_target_latency_with_the_estimate(space, tmp_path):
    lm = LatencyModel(space, cache_dir=str(tmp_path), num_threads=1)
    opt = DHSPG(space, lr=0.1, target_latency=0.6, latency_model=lm, warmup_steps=1, end_step=2)
    assert opt.latency_model is lm
    assert opt.kept_fraction is not None and 0.55 <= opt.kept_fraction <= 0.6


def test_dhspg_latency_errors(space, tmp_path):
    lm = LatencyModel(space, cache_dir=str(tmp_path), num_threads=1)
    with pytest.raises(OtonasError, match="target_latency=1.5 is invalid"):
        DHSPG(space, lr=0.1, target_latency=1.5, latency_model=lm, warmup_steps=1)
    with pytest.raises(OtonasError, match="exactly one budget"):
        DHSPG(space, lr=0.1, target_latency=0.5, target_flops=0.5, latency_model=lm, warmup_steps=1)
    with pytest.raises(OtonasError, match="give target_latency too"):
        DHSPG(space, lr=0.1, target_group_sparsity=0.5, latency_model=lm, warmup_steps=1)
    with pytest.raises(OtonasError, match="cannot be reached"):
        DHSPG(space, lr=0.1, target_latency=0.001, latency_model=lm, warmup_steps=1)
    with pytest.raises(OtonasError, match="batch=0"):
        LatencyTable(batch=0, cache_dir=False)


def test_search_with_target_latency_reports_estimate_and_measurement(tmp_path, monkeypatch):
    """A search at --target-latency 0.5 on a tiny ResNet: the quotas' estimated latency is within
    0.03 under the target (one common share of the families, channels given back while they
    fit), and report.json records the dense and subnet latency measured in turn."""
    from otonas.search import SearchConfig, search

    monkeypatch.setenv("OTONAS_CACHE_DIR", str(tmp_path / "cache"))
    report = search(SearchConfig(out=str(tmp_path / "run"), model="search_spaces:resnet20",
                                 model_kwargs={"size": "tiny"}, data="digits", mode="prune", target_latency=0.5,
                                 latency_threads=1, epochs=1, batch_size=128, progress=False, export=False, seed=2))
    lat = report["latency"]
    assert lat["target"] == 0.5 and lat["batch"] == 1 and lat["device"] == "cpu" and lat["threads"] == 1
    assert lat["memory_format"] == "contiguous"
    assert 0.47 <= lat["estimated_fraction"] <= 0.5
    assert lat["dense_seconds"] > 0 and lat["subnet_seconds"] > 0
    assert lat["measured_fraction"] == pytest.approx(lat["subnet_seconds"] / lat["dense_seconds"])
    assert report["max_abs_diff"] < 1e-4 and report["forced_groups"] == 0
    on_disk = json.loads((tmp_path / "run" / "report.json").read_text())
    assert on_disk["latency"] == lat
    assert "latency (measured)" in (tmp_path / "run" / "report.html").read_text()
    assert os.listdir(tmp_path / "cache" / "latency")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "otonas", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.getcwd()})


@pytest.mark.parametrize("args,needle", [
    (["--target-latency", "1.5"], "--target-latency 1.5 must be the fraction to keep, in (0, 1]"),
    (["--target-latency", "0.5", "--target-flops", "0.5"], "give one of --target-flops, --target-params and "
                                                            "--target-latency"),
    (["--target-latency", "0.5", "--mode", "erase"], "--erase-budget"),
    (["--target-latency", "0.5", "--latency-batch", "0"], "--latency-batch 0 must be an integer >= 1"),
    (["--target-latency", "0.5", "--latency-device", "tpu"], "--latency-device 'tpu' is not one of cpu, cuda"),
    (["--target-latency", "0.5", "--latency-memory-format", "nhwc"], "--latency-memory-format: invalid choice"),
])
def test_bad_latency_options_name_the_flag(tmp_path, args, needle):
    p = _cli("search", *args, "--out", str(tmp_path), "--epochs", "1")
    assert p.returncode == 2, p.stderr
    assert needle in p.stderr and "Traceback" not in p.stderr


def test_search_config_rejects_an_unknown_memory_format(tmp_path):
    from otonas import UsageError
    from otonas.search import SearchConfig, search

    with pytest.raises(UsageError, match="--latency-memory-format 'nhwc' is not one of contiguous, channels_last"):
        search(SearchConfig(out=str(tmp_path / "run"), target_latency=0.5, latency_memory_format="nhwc", epochs=1))


def test_tune_target_latency_range():
    from otonas.tuning import BudgetSpace
    from otonas import UsageError

    space = BudgetSpace.from_dict({"latency": [0.3, 0.8]})
    assert space.latency == (0.3, 0.8) and space.to_dict()["latency"] == [0.3, 0.8]
    with pytest.raises(UsageError, match="not both"):
        BudgetSpace.from_dict({"latency": [0.3, 0.8], "flops": [0.3, 0.8]})
    with pytest.raises(UsageError, match="latency = \\[0.0, 0.8\\]"):
        BudgetSpace.from_dict({"latency": [0.0, 0.8]})
    p = _cli("tune", "--target-latency", "0.5")
    assert p.returncode == 2 and "--target-latency '0.5': give the range" in p.stderr


def test_channels_last_table_is_its_own_cache_file_and_measures_in_that_layout(space, tmp_path, monkeypatch):
    nchw = LatencyModel(space, cache_dir=str(tmp_path), num_threads=1)
    seen: list[bool] = []
    real = torch.nn.functional.conv2d

    def spy(x, w, *a, **k):
        seen.append(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
                    and w.is_contiguous(memory_format=torch.channels_last))
        return real(x, w, *a, **k)

    monkeypatch.setattr(torch.nn.functional, "conv2d", spy)
    nhwc = LatencyModel(space, cache_dir=str(tmp_path), num_threads=1, memory_format=torch.channels_last)
    monkeypatch.setattr(torch.nn.functional, "conv2d", real)
    assert nhwc.table.path != nchw.table.path and nhwc.table.measured > 0 and nhwc.table.measured_models == 1
    assert nhwc.table.setting["memory_format"] == "channels_last" and "memory_format" not in nchw.table.setting
    # every convolution timed for the table (alone, and inside the dense network) ran channels-last
    assert seen and all(seen)
    assert nhwc.info()["memory_format"] == "channels_last" and nchw.info()["memory_format"] == "contiguous"
    again = LatencyModel(space, cache_dir=str(tmp_path), num_threads=1, memory_format="channels_last")
    assert again.table.measured == 0 and again.table.measured_models == 0
    with pytest.raises(OtonasError, match="not one of contiguous, channels_last"):
        LatencyTable(cache_dir=False, memory_format="nhwc")


def test_measure_latency_in_channels_last_leaves_the_nets_as_they_were(space):
    from otonas.latency import measure_latency

    net = _net()
    layouts: list[bool] = []
    net[0].register_forward_pre_hook(lambda m, a: layouts.append(a[0].is_contiguous(memory_format=torch.channels_last)
                                                                 and not a[0].is_contiguous()))
    x = torch.randn(2, 3, 16, 16)
    (t,) = measure_latency([net], (x,), repeats=2, warmup=1, memory_format="channels_last")
    assert t > 0 and layouts and all(layouts)
    assert net[0].weight.is_contiguous() and x.is_contiguous()  # the caller's net and input untouched
    layouts.clear()
    measure_latency([net], (x,), repeats=1, warmup=0)
    assert layouts == [False]
