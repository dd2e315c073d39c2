"""``DHSPG(space, model=m)`` / ``H2SPG(space, model=m)``: an optimizer over another network of the
analysed architecture (a deep copy, a rebuilt one) with the space as it is, against an optimizer
over a space analysed on that network itself."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from h2spg_helpers import Supernet, batch
from torch import nn

import otonas
from otonas.errors import UsageError
from otonas.optim import DHSPG, H2SPG, NormAffineScore


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return self.fc(y.mean((2, 3)))


def _run(opt: torch.optim.Optimizer, model: nn.Module, steps: int, inputs) -> list[tuple[set[int], dict]]:  # type: ignore[no-untyped-def]
    gen = torch.Generator().manual_seed(3)
    out = []
    for _ in range(steps):
        x, y = inputs(gen)
        F.cross_entropy(model(x), y).backward()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opt.step()
        opt.zero_grad()
        out.append((set(torch.nonzero(opt.zero_groups()).flatten().tolist()),  # type: ignore[attr-defined]
                    {n: p.detach().clone() for n, p in model.named_parameters()}))
    return out


def _same(a: list, b: list) -> None:  # type: ignore[type-arg]
    assert len(a) == len(b)
    for t, ((za, pa), (zb, pb)) in enumerate(zip(a, b)):
        assert za == zb, f"step {t}"
        for n in pa:
            assert torch.equal(pa[n], pb[n]), f"step {t}, {n}"


def _digits_like(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(8, 1, 6, 6, generator=gen), torch.randint(0, 10, (8,), generator=gen)


@pytest.mark.parametrize("score", [None, NormAffineScore()], ids=["default", "norm_affine"])
def test_dhspg_over_a_copy_is_dhspg_over_the_copy_analysed(score) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = Net()
    space = otonas.analyze(model, (torch.randn(2, 1, 6, 6),))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    twin, ref_model = copy.deepcopy(model), copy.deepcopy(model)
    kw = dict(lr=0.05, momentum=0.9, target_group_sparsity=0.5, warmup_steps=2, end_step=10, periods=3,
              **({} if score is None else {"score": score}))
    got = _run(DHSPG(space, model=twin, **kw), twin, 14, _digits_like)  # type: ignore[arg-type]
    ref_space = otonas.analyze(ref_model, (torch.randn(2, 1, 6, 6),))
    want = _run(DHSPG(ref_space, **kw), ref_model, 14, _digits_like)  # type: ignore[arg-type]
    _same(got, want)
    assert got[-1][0]  # groups were zeroed, in the copy
    for n, p in model.named_parameters():  # the analysed model was left alone
        assert torch.equal(p, before[n]), n


def test_h2spg_over_a_copy_is_h2spg_over_the_copy_analysed() -> None:
    torch.manual_seed(0)
    model = Supernet([("sum", 3), ("nested", 2), ("cat", 2)])
    space = otonas.analyze(model, (batch(0)[0],))
    twin, ref_model = copy.deepcopy(model), copy.deepcopy(model)
    kw = dict(lr=0.05, momentum=0.9, erase_budget=0.5, target_group_sparsity=0.3, warmup_steps=2, end_step=10,
              periods=3)

    def inputs(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch(int(torch.randint(0, 1000, (1,), generator=gen)))
        return x, y

    got = _run(H2SPG(space, model=twin, **kw), twin, 14, inputs)  # type: ignore[arg-type]
    ref_space = otonas.analyze(ref_model, (batch(0)[0],))
    want = _run(H2SPG(ref_space, **kw), ref_model, 14, inputs)  # type: ignore[arg-type]
    _same(got, want)
    assert got[-1][0]


def test_a_model_of_another_architecture_is_refused_by_name() -> None:
    model = Net()
    space = otonas.analyze(model, (torch.randn(2, 1, 6, 6),))
    other = Net()
    other.fc = nn.Linear(8, 5)
    with pytest.raises(UsageError, match=r"DHSPG: .*fc\.weight"):
        DHSPG(space, model=other, lr=0.1, target_group_sparsity=0.5, warmup_steps=1)
    del other.conv2
    with pytest.raises(UsageError, match=r"H2SPG: .*conv2"):
        H2SPG(space, model=other, lr=0.1, warmup_steps=1, erase_budget=0.0)
    assert DHSPG(space, model=model, lr=0.1, target_group_sparsity=0.5, warmup_steps=1)  # the analysed one: as is
