"""NormAffineScore: groups ranked by their normalization layers' scale and shift (Network Slimming),
checked against sums written by hand over the model's BatchNorm parameters."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
import torch.nn.functional as F
from optim_helpers import StubSpace, tiny_batch, tiny_space
from torch import Tensor, nn

from otonas.optim import DHSPG, GroupStats, MagnitudeScore, NormAffineScore, make_score
from otonas.optim._layout import GroupLayout


def bn_reference(space: StubSpace) -> tuple[Tensor, Tensor]:
    """Per group: Σ γ² + β² over bn1 / bn2, and how many such elements, from the layout by hand."""
    n = space.num_prunable_groups
    sq, size = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    params = dict(space.model.named_parameters())
    for name in ("bn1.weight", "bn1.bias", "bn2.weight", "bn2.bias"):
        (dim, index), = space.group_layout()[name]
        for pos, g in enumerate(index.tolist()):
            if g >= 0:
                sq[g] += float(params[name][pos].detach()) ** 2
                size[g] += 1
    return sq, size


def test_layout_sums_the_normalization_scales_and_shifts_of_each_group() -> None:
    space = tiny_space()
    params = list(space.model.parameters())
    layout = GroupLayout(space, params)
    sq, size = bn_reference(space)
    # conv1.bias and conv2.bias are 1-D grouped parameters too, but not a normalization's: left out
    assert torch.allclose(layout.norm_sq(params, torch.float64), sq, rtol=1e-12, atol=0)
    assert torch.equal(layout.norm_size, size)
    assert size.tolist() == [2.0] * 9


def stats_of(space: StubSpace) -> GroupStats:
    params = list(space.model.parameters())
    layout = GroupLayout(space, params)
    x_sq = torch.zeros(space.num_prunable_groups + 1, dtype=torch.float64)
    named = dict(space.model.named_parameters())
    for name, entries in space.group_layout().items():
        p = named[name].detach()
        for dim, index in entries:
            idx = torch.where(index < 0, space.num_prunable_groups, index)
            x_sq.index_add_(0, idx, p.movedim(dim, 0).reshape(p.shape[dim], -1).double().pow(2).sum(1))
    one = torch.ones(space.num_prunable_groups, dtype=torch.float64)
    return GroupStats(dot=one, x_sq=x_sq[:-1], d_sq=one, x_abs=one, size=one, family=None,
                      norm_sq=layout.norm_sq(params, torch.float64), norm_size=layout.norm_size)


def test_score_ignores_the_scale_of_the_weights_a_normalization_divides_out() -> None:
    space = tiny_space()
    before = NormAffineScore()(stats_of(space))
    assert torch.equal(before, -bn_reference(space)[0])
    mag_before = MagnitudeScore()(stats_of(space))
    with torch.no_grad():  # BatchNorm makes conv1's output invariant to the scale of each channel's weights
        space.model.conv1.weight.mul_(torch.tensor([50.0, 1e-3, 7.0, 1.0, 0.1, 20.0], dtype=torch.float64)
                                      .view(-1, 1, 1, 1))
    after = NormAffineScore()(stats_of(space))
    assert torch.equal(after, before)
    assert not torch.equal(MagnitudeScore()(stats_of(space)).argsort(), mag_before.argsort())


class NoNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.b(torch.relu(self.a(x)))


class MyRMSNorm(nn.Module):  # another library's normalization, known by its name
    def __init__(self, n: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.5, 2.0, n))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


def test_without_normalization_the_score_is_the_magnitude() -> None:
    torch.manual_seed(0)
    model = NoNorm().double()
    ids = torch.arange(6)
    space = StubSpace(model, {"a.weight": [(0, ids)], "a.bias": [(0, ids)], "b.weight": [(1, ids)]}, 6)
    stats = stats_of(space)
    assert stats.norm_size is not None and int(stats.norm_size.sum()) == 0
    assert torch.equal(NormAffineScore()(stats), MagnitudeScore()(stats))


def test_normalization_classes_of_other_libraries_count() -> None:
    model = nn.Sequential(nn.Linear(4, 6), MyRMSNorm(6))
    ids = torch.arange(6)
    space = StubSpace(model, {"0.weight": [(0, ids)], "1.weight": [(0, ids)]}, 6)
    params = list(model.parameters())
    layout = GroupLayout(space, params)
    assert torch.allclose(layout.norm_sq(params, torch.float64),
                          torch.linspace(0.5, 2.0, 6, dtype=torch.float64) ** 2, rtol=1e-6)


def test_zero_groups_first_and_missing_statistics_refused() -> None:
    stats = stats_of(tiny_space())
    x_abs = stats.x_abs.clone()
    x_abs[4] = 0
    assert NormAffineScore()(dataclasses.replace(stats, x_abs=x_abs))[4] == torch.inf
    with pytest.raises(TypeError, match="norm_sq"):
        NormAffineScore()(dataclasses.replace(stats, norm_sq=None))
    assert isinstance(make_score("norm_affine"), NormAffineScore)


def test_progressive_dhspg_removes_the_smallest_normalization_scales_per_family() -> None:
    """One period, lr tiny: the groups the optimizer zeroes are, in each family, those of smallest
    γ² + β² at the selection, whatever the convolution weights' norms."""
    space = tiny_space(seed=3)
    with torch.no_grad():  # the largest conv weights on the channels with the smallest BN affine
        order = bn_reference(space)[0][:6].argsort()
        space.model.conv1.weight.mul_(torch.linspace(10.0, 0.1, 6, dtype=torch.float64)[order.argsort()]
                                      .view(-1, 1, 1, 1))
    sq = bn_reference(space)[0]
    opt = DHSPG(space, lr=1e-9, momentum=0.9, target_group_sparsity=1 / 3, warmup_steps=1, end_step=4,
                schedule="progressive", periods=1, score=NormAffineScore())
    batch = tiny_batch()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no forced group
        for _ in range(6):
            F.cross_entropy(space.model(batch[0]), batch[1]).backward()
            opt.step()
            opt.zero_grad()
    zero = set(torch.nonzero(opt.zero_groups()).flatten().tolist())
    assert zero == set(sq[:6].argsort()[:2].tolist()) | {6 + int(sq[6:].argmin())}
    assert opt.metrics()["num_forced_groups"] == 0


class FunctionalBN(nn.Module):
    """A batch norm written with F.batch_norm on the block's own parameters: no *Norm module."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.gain = nn.Parameter(torch.linspace(0.2, 1.6, 8))
        self.shift = nn.Parameter(torch.zeros(8))
        self.register_buffer("mean", torch.zeros(8))
        self.register_buffer("var", torch.ones(8))
        self.head = nn.Linear(8, 4)

    def forward(self, x: Tensor) -> Tensor:
        y = F.batch_norm(self.conv(x), self.mean, self.var, self.gain, self.shift, training=True)
        return self.head(torch.relu(y).mean((2, 3)))


def test_normalizations_found_in_the_graph_whatever_module_holds_them() -> None:
    import otonas

    torch.manual_seed(0)
    model = FunctionalBN()
    space = otonas.analyze(model, (torch.randn(2, 3, 6, 6),))
    assert space.normalization_params == {"gain", "shift"}
    params = list(model.parameters())
    layout = GroupLayout(space, params)
    assert space.num_prunable_groups == 8
    (_, g), = space.group_layout()["gain"]
    want = torch.zeros(8, dtype=torch.float64).index_add_(0, g, torch.linspace(0.2, 1.6, 8, dtype=torch.float64) ** 2)
    assert torch.allclose(layout.norm_sq(params, torch.float64), want, rtol=1e-6)
    assert torch.equal(layout.norm_size, torch.full((8,), 2.0, dtype=torch.float64))


def test_resnet_every_group_has_its_batchnorms() -> None:
    """On a real analysed ResNet every channel group holds the scale and shift of each BatchNorm
    that normalizes it, by the graph and by the modules alike."""
    import otonas
    import search_spaces

    model = search_spaces.create("resnet20", size="tiny", in_chans=1, num_classes=10)
    space = otonas.analyze(model, (torch.randn(2, 1, 28, 28),))
    bn = {f"{m}.{p}" for m, mod in model.named_modules() if isinstance(mod, nn.BatchNorm2d) for p in ("weight", "bias")}
    assert space.normalization_params == bn
    params = list(model.parameters())
    layout = GroupLayout(space, params)
    named = dict(model.named_parameters())
    ref = torch.zeros(space.num_prunable_groups, dtype=torch.float64)
    for fqn, entries in space.group_layout().items():
        if fqn in bn:
            (_, g), = entries
            ok = g >= 0
            ref.index_add_(0, g[ok], named[fqn].detach().double()[ok] ** 2)
    assert torch.allclose(layout.norm_sq(params, torch.float64), ref, rtol=1e-6)
    assert bool((layout.norm_size > 0).all())


class HalfNormed(nn.Module):
    """Channel groups with a BatchNorm (conv1's) and without (conv2's, fc1's)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc1 = nn.Linear(16, 24)
        self.fc2 = nn.Linear(24, 10)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.relu(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return self.fc2(torch.relu(self.fc1(y.mean((2, 3)))))


class _NormAffineReadingAll(NormAffineScore):
    """The same score, but claiming to read the weights of normalized groups: the optimizer then sums
    every weight at a period start (the reference path)."""

    reads_normalized_weights = True


@pytest.mark.parametrize("kernels", [True, False], ids=["loops", "pytorch"])
def test_period_starts_read_only_the_weights_the_norm_score_needs(kernels: bool, monkeypatch: pytest.MonkeyPatch
                                                                  ) -> None:
    """NormAffineScore reads a normalized group's γ and β only: at a progressive period start the
    optimizer sums only the weights holding a group without a normalization (and the γ, β), and
    the step before it sums no other. The run is the one that sums everything: the same zero
    groups at every step, the same parameters."""
    import otonas
    from otonas.optim import _kernels

    if kernels and not _kernels.enabled():
        pytest.skip(f"numba is not usable here: {_kernels._failed}")
    monkeypatch.setattr(_kernels, "enabled", lambda: kernels)
    monkeypatch.setattr(_kernels, "MIN_NUMEL", 0)
    runs = []
    for score in (NormAffineScore(), _NormAffineReadingAll()):
        torch.manual_seed(0)
        model = HalfNormed()
        space = otonas.analyze(model, (torch.randn(2, 1, 6, 6),))
        opt = DHSPG(space, lr=0.05, momentum=0.9, target_group_sparsity=0.5, warmup_steps=2, end_step=14, periods=4,
                    score=score)
        gen = torch.Generator().manual_seed(1)
        out = []
        for _ in range(18):
            x = torch.randn(8, 1, 6, 6, generator=gen)
            y = torch.randint(0, 10, (8,), generator=gen)
            F.cross_entropy(model(x), y).backward()
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # no forced group
                opt.step()
            opt.zero_grad()
            out.append((set(torch.nonzero(opt.zero_groups()).flatten().tolist()),
                        {n: p.detach().clone() for n, p in model.named_parameters()}))
        runs.append((out, opt))
    (got, opt), (want, ref) = runs
    names = [n for n, _ in HalfNormed().named_parameters()]
    position = {n: i for i, n in enumerate(names)}
    read = opt._norm_plans[2] if opt._norm_plans is not None else None
    assert read is not None and ref._norm_plans is None  # the restricted sums were used, and only there
    assert position["conv1.weight"] not in read  # its groups all have bn1: never summed at a period start
    assert {position[n] for n in ("conv2.weight", "fc1.weight", "bn1.weight", "bn1.bias")} <= read
    for t, ((zg, pg), (zw, pw)) in enumerate(zip(got, want)):
        assert zg == zw, f"step {t}"
        for n in pg:
            torch.testing.assert_close(pg[n], pw[n], rtol=1e-10, atol=1e-12, msg=f"step {t}, {n}")
    assert len(got[-1][0]) > 0
