"""fold_batchnorm: inference BatchNorms folded into the convolutions before them, in a built
network; the folded network against the unfolded one and against the zeroed model it came from."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import otonas
from otonas.build import fold_batchnorm
from otonas.errors import BuildError
from otonas.testing import zero_groups_

_BN_OPS = (torch.ops.aten.batch_norm.default, torch.ops.aten._native_batch_norm_legit_no_training.default)


def _bns(gm):
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target in _BN_OPS]


class _Net(nn.Module):
    """conv-BN pairs (with and without conv bias), a BN after an add (not foldable), a conv
    read by two users (not foldable), a BatchNorm1d after a linear layer (not a conv)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 8, 3, padding=1, bias=True), nn.BatchNorm2d(8)
        self.b3 = nn.BatchNorm2d(8)
        self.c4, self.b4 = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)
        self.fc, self.b5 = nn.Linear(8, 6), nn.BatchNorm1d(6)

    def forward(self, x):
        y = torch.relu(self.b1(self.c1(x)))
        y = self.b3(torch.relu(self.b2(self.c2(y))) + y)
        z = self.c4(y)
        y = self.b4(z) + z
        return self.b5(self.fc(y.mean((2, 3))))


def _randomise_bn(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))


def test_folds_conv_bn_pairs_only_and_keeps_the_function():
    torch.manual_seed(0)
    model = _Net().eval()
    _randomise_bn(model)
    space = otonas.analyze(model, (torch.randn(2, 3, 10, 10),))
    rng = np.random.default_rng(0)
    mask = rng.random(space.num_prunable_groups) < 0.4
    zero_groups_(space, mask)
    gm = otonas.build(space)
    x = torch.randn(5, 3, 12, 12)
    with torch.no_grad():
        before, reference = gm(x), model(x)
    n_bn, n_params = len(_bns(gm)), sum(p.numel() for p in gm.parameters())
    assert fold_batchnorm(gm) == 2  # b1 and b2; not b3 (after an add), b4 (conv read twice), b5 (linear)
    assert len(_bns(gm)) == n_bn - 2
    assert sum(p.numel() for p in gm.parameters()) < n_params
    with torch.no_grad():
        after = gm(x)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(after, reference, rtol=1e-5, atol=1e-5)
    assert fold_batchnorm(gm) == 0  # nothing left to fold


def test_folded_resnet_subnet_and_full_network_match_and_export(tmp_path):
    from otonas.models import resolve_model

    torch.manual_seed(0)
    model = resolve_model("torchvision:resnet18").model.eval()
    _randomise_bn(model)
    space = otonas.analyze(model, (torch.randn(2, 3, 64, 64),))
    full = otonas.build(space)
    mask = np.random.default_rng(1).random(space.num_prunable_groups) < 0.5
    zero_groups_(space, mask)
    sub = otonas.build(space)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        ref_full, ref_sub = full(x), sub(x)
    assert fold_batchnorm(full) == 20 and fold_batchnorm(sub) == 20  # every BatchNorm of ResNet-18
    assert not _bns(full) and not _bns(sub)
    with torch.no_grad():
        torch.testing.assert_close(full(x), ref_full, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(sub(x), ref_sub, rtol=1e-4, atol=1e-4)
        cl = sub.to(memory_format=torch.channels_last)
        torch.testing.assert_close(cl(x.contiguous(memory_format=torch.channels_last)), ref_sub, rtol=1e-4, atol=1e-4)
    # the folded subnet exports, and model.py reproduces it in a fresh process
    sub = sub.to(memory_format=torch.contiguous_format)
    otonas.export(sub, tmp_path / "out", example_inputs=(x,))
    torch.save({"x": x, "y": sub(x).detach()}, tmp_path / "io.pt")
    code = ("import torch, otonas; d = torch.load(%r); net = otonas.load(%r).eval(); "
            "torch.testing.assert_close(net(d['x']), d['y'], rtol=1e-4, atol=1e-4); print('ok')"
            % (str(tmp_path / "io.pt"), str(tmp_path / "out")))
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and p.stdout.strip().endswith("ok"), p.stderr[-2000:]


def test_fold_batchnorm_rejects_a_plain_module():
    with pytest.raises(BuildError, match="takes the GraphModule otonas.build returns"):
        fold_batchnorm(nn.Conv2d(1, 1, 1))  # type: ignore[arg-type]
