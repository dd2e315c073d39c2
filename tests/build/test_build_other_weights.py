"""A search space is the architecture's facts: ``space.plan(model=)`` and ``otonas.build(space,
model=)`` read another network of that architecture (a trained copy, a checkpoint, the real
network of a space analysed on the meta device), checked against that network's own outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import otonas
import search_spaces
from otonas.errors import UsageError


def make(seed: int, device: str = "cpu") -> nn.Module:
    torch.manual_seed(seed)
    with torch.device(device):
        return search_spaces.create("resnet20", size="tiny", in_chans=1, num_classes=10)


def zero_(space: otonas.SearchSpace, model: nn.Module, mask: np.ndarray) -> None:
    """Zero the slices of the groups in ``mask`` in ``model``'s own parameters, from the layout."""
    params = dict(model.named_parameters(remove_duplicate=False))
    sel = torch.from_numpy(mask)
    with torch.no_grad():
        for fqn, entries in space.group_layout().items():
            for dim, g in entries:
                hit = (g >= 0) & sel[g.clamp(min=0)]
                params[fqn].index_fill_(dim, torch.nonzero(hit).flatten(), 0.0)


def trained_copy(space: otonas.SearchSpace, seed: int) -> tuple[nn.Module, np.ndarray]:
    other = make(seed)
    mask = np.random.default_rng(seed).random(space.num_prunable_groups) < 0.3
    zero_(space, other, mask)
    with torch.no_grad():  # running statistics of its own, so that buffers must come from it too
        for m in other.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return other.eval(), mask


@pytest.mark.parametrize("analysed_on", ["cpu", "meta"])
def test_plan_and_build_read_the_given_network(analysed_on: str) -> None:
    x = torch.randn(3, 1, 28, 28)
    space = otonas.analyze(make(0, analysed_on), (torch.randn(2, 1, 28, 28, device=analysed_on),))
    other, mask = trained_copy(space, 1)
    plan = space.plan(model=other)
    assert plan.removed is not None and np.array_equal(plan.removed, space.removable(mask))
    assert plan.removed.sum() > 5
    sub = otonas.build(space, plan, model=other)
    with torch.no_grad():
        torch.testing.assert_close(sub(x), other(x), rtol=1e-5, atol=1e-5)
    assert sum(p.numel() for p in sub.parameters()) < sum(p.numel() for p in other.parameters())
    if analysed_on == "cpu":  # the analysed model itself is untouched and has nothing zero
        assert not space.plan().removed.any()


def test_build_in_place_slices_the_given_network() -> None:
    x = torch.randn(3, 1, 28, 28)
    base = make(0)
    space = otonas.analyze(base, (torch.randn(2, 1, 28, 28),))
    other, _ = trained_copy(space, 2)
    with torch.no_grad():
        want = other(x)
    n_base = sum(p.numel() for p in base.parameters())
    out = otonas.build(space, model=other, inplace=True)
    assert out is other
    with torch.no_grad():
        torch.testing.assert_close(other(x), want, rtol=1e-5, atol=1e-5)
    assert sum(p.numel() for p in other.parameters()) < n_base == sum(p.numel() for p in base.parameters())


def test_another_architecture_is_refused_naming_the_tensor() -> None:
    space = otonas.analyze(make(0), (torch.randn(2, 1, 28, 28),))
    torch.manual_seed(0)
    wider = search_spaces.create("resnet20", size="default", in_chans=1, num_classes=10)
    with pytest.raises(UsageError, match=r"model= is not the analysed architecture: parameter '.*' has shape"):
        space.plan(model=wider)
    with pytest.raises(UsageError, match="not the analysed architecture"):
        otonas.build(space, model=wider)
    with pytest.raises(UsageError, match="has no parameter"):
        space.zero_groups(model=nn.Linear(2, 2))


def test_export_writes_the_given_network(tmp_path: object) -> None:
    import subprocess
    import sys
    from pathlib import Path

    out = Path(str(tmp_path)) / "exp"
    space = otonas.analyze(make(0, "meta"), (torch.randn(2, 1, 28, 28, device="meta"),))
    other, _ = trained_copy(space, 3)
    x = torch.randn(3, 1, 28, 28)
    otonas.export(space, out, model=other, example_inputs=(x,))
    torch.save({"x": x, "y": other(x).detach()}, out / "io.pt")
    code = ("import sys, torch; sys.path.insert(0, sys.argv[1]); from model import load; "
            "m = load().eval(); d = torch.load(sys.argv[1] + '/io.pt'); "
            "torch.testing.assert_close(m(d['x']), d['y'], rtol=1e-5, atol=1e-5); print('ok')")
    p = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "ok" in p.stdout, p.stderr[-2000:]
