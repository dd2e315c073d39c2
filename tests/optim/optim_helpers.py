"""A stub search space, a tiny network, and a slow reference DHSPG written group by group.

The reference loops over groups and slices in Python, the way the algorithm reads on paper;
the optimizer under test computes the same with segment sums. Tests run both on the same
gradients and compare.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


class StubSpace:
    """The part of ``SearchSpace`` the optimizer reads, for hand-made layouts."""

    def __init__(self, model: nn.Module, layout: dict[str, list[tuple[int, Tensor]]], n: int,
                 family: list[int] | None = None) -> None:
        self.model = model
        self._layout = layout
        self.num_prunable_groups = n
        if family is not None:
            self.group_family = family

    def group_layout(self) -> dict[str, list[tuple[int, Tensor]]]:
        return self._layout


class TinyNet(nn.Module):
    """conv-bn-relu-conv-bn-relu-pool-linear: groups overlap on both conv weights' dims."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 4, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def tiny_space(*, seed: int = 0, dtype: torch.dtype = torch.float64, family: bool = True) -> StubSpace:
    """TinyNet with 9 groups: conv1's 6 channels (0–5), conv2's channels 0–2 (6–8); conv2's
    channel 3 is in no group (-1) and fc's rows and bias are in none either."""
    torch.manual_seed(seed)
    model = TinyNet().to(dtype)
    with torch.no_grad():  # non-trivial BN affine values, so every group has weight
        for bn in (model.bn1, model.bn2):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    c1 = torch.arange(6)
    c2 = torch.tensor([6, 7, 8, -1])
    layout = {
        "conv1.weight": [(0, c1)], "conv1.bias": [(0, c1)], "bn1.weight": [(0, c1)], "bn1.bias": [(0, c1)],
        "conv2.weight": [(0, c2), (1, c1)], "conv2.bias": [(0, c2)], "bn2.weight": [(0, c2)],
        "bn2.bias": [(0, c2)], "fc.weight": [(1, c2)],
    }
    return StubSpace(model, layout, 9, family=[0] * 6 + [1] * 3 if family else None)


def tiny_batch(seed: int = 1, n: int = 8, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 6, 6, generator=g, dtype=dtype), torch.randint(0, 5, (n,), generator=g)


# ---------------------------------------------------------------------------- reference
Slice = tuple[str, int, int]  # (parameter name, dim, position)


def group_slices(space: StubSpace) -> list[list[Slice]]:
    out: list[list[Slice]] = [[] for _ in range(space.num_prunable_groups)]
    for name, entries in space.group_layout().items():
        for dim, index in entries:
            for pos, g in enumerate(index.tolist()):
                if g >= 0:
                    out[g].append((name, dim, pos))
    return out


def ref_lambda(dot: float, xn: float, dsq: float, *, lmbda: float, amplify: float, coeff: float) -> float:
    if dot >= 0 or xn == 0:
        return lmbda
    lo = -dot / xn
    hi = dsq / lo  # = −dsq·xn/dot, in one division (no underflow where hi is not small)
    lam = min(max(amplify * lo, lmbda), coeff * lmbda)
    if lam >= hi:
        lam = (lo + hi) / 2
    return lam


def sums(slices: list[Slice], a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    return sum(float((a[n].select(dim, pos) * b[n].select(dim, pos)).sum()) for n, dim, pos in slices)


def ref_scores(slices: list[list[Slice]], x: dict[str, Tensor], d: dict[str, Tensor]) -> list[float]:
    cos, inv = [], []
    for sl in slices:
        xx, dd, xd = sums(sl, x, x), sums(sl, d, d), sums(sl, x, d)
        cos.append(xd / math.sqrt(xx * dd) if xx > 0 and dd > 0 else 0.0)
        size = sum(x[n].select(dim, pos).numel() for n, dim, pos in sl)
        ab = sum(float(x[n].select(dim, pos).abs().sum()) for n, dim, pos in sl)
        inv.append(size / ab if ab > 0 else math.inf)
    cmax = max(abs(c) for c in cos) or 1.0
    imax = max((abs(v) for v in inv if math.isfinite(v)), default=1.0) or 1.0
    return [math.inf if not math.isfinite(v) else c / cmax + v / imax for c, v in zip(cos, inv)]


def ref_partition(scores: list[float], k: int, family: list[int] | None) -> set[int]:
    scores = list(scores)
    if family is not None:
        for f in set(family):
            members = [g for g in range(len(scores)) if family[g] == f]
            keep = min(members, key=lambda g: (scores[g], g))
            scores[keep] = -math.inf
    order = sorted(range(len(scores)), key=lambda g: (-scores[g], g))
    return set(order[:k])


@dataclass
class RefDHSPG:
    """DHSPG (SGD variant) over a dict of tensors, one group at a time."""

    space: StubSpace
    lr: float
    k: int
    warmup_steps: int
    end_step: int
    momentum: float = 0.0
    weight_decay: float = 0.0
    lmbda: float = 2.0  # DHSPG's default (otonas.optim.DEFAULT_LMBDA)
    amplify: float = 1.1
    coeff: float = 10.0
    epsilon: float = 0.0
    rule: str = "fixed"  # or "schedule": λ_g lifted to reach the half-space boundary by end_step
    gain: float = 1.5
    step: int = 0
    redundant: set[int] | None = None
    zero: set[int] = field(default_factory=set)
    bufs: dict[str, Tensor] = field(default_factory=dict)
    lambdas: dict[int, float] = field(default_factory=dict)
    forced: int = 0

    def __post_init__(self) -> None:
        self.slices = group_slices(self.space)
        self.family = getattr(self.space, "group_family", None)

    def zero_slices(self, t: dict[str, Tensor], groups: set[int]) -> None:
        for g in groups:
            for n, dim, pos in self.slices[g]:
                t[n].select(dim, pos).zero_()

    def apply(self, x: dict[str, Tensor], grads: dict[str, Tensor]) -> dict[str, Tensor]:
        x = {n: v.clone() for n, v in x.items()}
        g = {n: v.clone() for n, v in grads.items()}
        self.zero_slices(g, self.zero)
        d = {}
        for n in x:
            gn = g[n] + self.weight_decay * x[n]
            if self.momentum:
                self.bufs[n] = gn.clone() if n not in self.bufs else self.momentum * self.bufs[n] + gn
                gn = self.bufs[n]
            d[n] = gn
        t = self.step
        if t >= self.warmup_steps and self.redundant is None:
            self.redundant = ref_partition(ref_scores(self.slices, x, d), self.k, self.family)
        new = {n: x[n] - self.lr * d[n] for n in x}
        if self.warmup_steps <= t < self.end_step:
            assert self.redundant is not None
            self.lambdas = {}
            pending = [r for r in sorted(self.redundant) if r not in self.zero]
            for r in pending:
                sl = self.slices[r]
                xx = sums(sl, x, x)
                if xx == 0:
                    continue
                lam = ref_lambda(sums(sl, x, d), math.sqrt(xx), sums(sl, d, d), lmbda=self.lmbda,
                                 amplify=self.amplify, coeff=self.coeff)
                if self.rule == "schedule":  # the move along x_g/‖x_g‖ reaches gain·(1 − ε)·‖x_g‖ / steps left
                    along = self.gain * (1 - self.epsilon) * math.sqrt(xx) / (self.end_step - t)
                    lam = max(lam, along / self.lr - sums(sl, x, d) / math.sqrt(xx))
                self.lambdas[r] = lam
                for n, dim, pos in sl:
                    new[n].select(dim, pos).sub_(self.lr * lam / math.sqrt(xx) * x[n].select(dim, pos))
            newly = {r for r in pending
                     if sums(self.slices[r], new, x) < self.epsilon * sums(self.slices[r], x, x)
                     or sums(self.slices[r], x, x) == 0}
            if t == self.end_step - 1:
                rest = set(pending) - newly
                self.forced = len(rest)
                newly |= rest
            self.zero |= newly
            self.zero_slices(new, self.zero)
            if self.momentum:
                self.zero_slices(self.bufs, self.zero)
        self.step += 1
        return new


def params_of(model: nn.Module) -> dict[str, Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def random_grads(model: nn.Module, gen: torch.Generator, scale: float = 1.0) -> dict[str, Tensor]:
    return {n: scale * torch.randn(p.shape, generator=gen, dtype=p.dtype) for n, p in model.named_parameters()}


# gloo's teardown can abort a rank in C++ after its work is done and its files are written
# ("terminate called without an active exception"); the workers tear down behind a barrier,
# and a launch that still ends that way is run once more. Any other failure fails the test.
TEARDOWN_ABORT = "terminate called without an active exception"


def torchrun(cmd: list[str], env: dict[str, str], outputs: list[str], timeout: float) -> None:
    """Run ``cmd`` (a torchrun launch); assert it succeeded and wrote every file in ``outputs``."""
    import os
    import subprocess

    for attempt in range(2):
        for path in outputs:
            if os.path.exists(path):
                os.remove(path)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode == 0:
            break
        teardown_only = TEARDOWN_ABORT in proc.stderr and all(os.path.exists(p) for p in outputs)
        if attempt == 1 or not teardown_only:
            raise AssertionError(f"torchrun failed (exit {proc.returncode}, attempt {attempt + 1}):\n"
                                 + proc.stdout[-3000:] + proc.stderr[-3000:])
    missing = [p for p in outputs if not os.path.exists(p)]
    assert not missing, f"torchrun succeeded but did not write {missing}"
