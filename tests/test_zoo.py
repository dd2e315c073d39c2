"""`verify` on the torchvision classification zoo: a representative dozen by default,
every model with ``-m slow`` (it prints the prunable share of each)."""

from __future__ import annotations

import pytest
import torch

import otonas
from otonas._torchvision import import_torchvision

# Too large for a 24 GiB machine at verify's batch sizes, or for the slow run's time.
TOO_LARGE = {"vit_h_14", "regnet_y_128gf"}

DOZEN = ["resnet18", "mobilenet_v3_small", "mobilenet_v2", "shufflenet_v2_x0_5", "squeezenet1_1", "mnasnet0_5",
         "regnet_y_400mf", "efficientnet_b0", "googlenet", "alexnet", "convnext_tiny", "swin_t"]


def _check(name: str) -> otonas.VerifyReport:
    report = otonas.verify(f"torchvision:{name}", fraction=0.3, seed=0)
    print(f"{name}: prunable share {report.prunable_param_share:.1%}, params {report.params_before:,} -> "
          f"{report.params_after:,} ({1 - report.params_after / report.params_before:.1%} fewer), "
          f"max rel diff {report.max_rel_diff:.2g}")
    assert report.passed, report.message
    assert report.max_rel_diff <= 1e-4
    # pinning is not a way to pass: 30% of the groups must take at least 10% of the parameters
    assert report.params_after <= 0.9 * report.params_before, report.pinned[:5]
    return report


@pytest.mark.parametrize("name", DOZEN)
def test_verify_representative_models(name):
    _check(name)


def _zoo() -> list[str]:
    tv = import_torchvision()
    return [n for n in tv.models.list_models(module=tv.models) if n not in TOO_LARGE]


@pytest.mark.slow
@pytest.mark.parametrize("name", _zoo())
def test_verify_whole_zoo(name):
    _check(name)


def _segmentation() -> list[str]:
    tv = import_torchvision()
    return list(tv.models.list_models(module=tv.models.segmentation))


def test_segmentation_model_builds_offline():
    """A segmentation model (dict output, a backbone that defaults to pretrained weights): it is
    built without weights, so nothing downloads, and it verifies."""
    _check("lraspp_mobilenet_v3_large")


@pytest.mark.slow
@pytest.mark.parametrize("name", _segmentation())
def test_verify_segmentation_models(name):
    """FCN, DeepLabV3 and LRASPP: the analysis and the exact build hold beyond classifiers."""
    _check(name)


def _optical_flow() -> list[str]:
    tv = import_torchvision()
    return list(tv.models.list_models(module=tv.models.optical_flow))


def test_optical_flow_models_take_two_frames():
    """RAFT's forward takes two images: the zoo path gives it two inputs of its smallest size."""
    from otonas._models import resolve_model

    resolved = resolve_model("torchvision:raft_small")
    assert resolved.input_shapes == ((2, 3, 128, 128), (2, 3, 128, 128))
    assert resolved.input_dtypes == (torch.float32, torch.float32)


@pytest.mark.slow
@pytest.mark.parametrize("name", _optical_flow())
def test_verify_optical_flow_models(name):
    """RAFT (two frames in, a list of 12 flow refinements out, correlation sampled by grid_sample)."""
    _check(name)
