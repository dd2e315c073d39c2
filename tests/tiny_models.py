"""Small networks that exercise one analysis rule each; shared by the analysis and build tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvChain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)))
        x = F.relu(self.b2(self.c2(x)))
        return self.fc(x.mean((2, 3)))


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a1, self.a2 = nn.Conv2d(8, 6, 1), nn.Conv2d(6, 8, 3, padding=1)
        self.down = nn.Conv2d(8, 16, 1, stride=2)
        self.b1, self.b2 = nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = x + self.a2(torch.relu(self.a1(x)))
        x = torch.relu(self.down(x) + self.b2(torch.relu(self.b1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 5, 1), nn.Conv2d(3, 7, 3, padding=1)
        self.c = nn.Conv2d(12, 6, 1)
        self.fc = nn.Linear(6 * 4 * 4, 3)

    def forward(self, x):
        y = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], dim=1)
        y1, y2 = torch.split(y, [4, 8], dim=1)
        y = torch.cat([y2, y1 * 2.0], dim=1)
        y = self.c(y)
        return self.fc(F.adaptive_avg_pool2d(y, 4).flatten(1))


class GroupedDepthwise(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pw = nn.Conv2d(3, 16, 1)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.dw = nn.Conv2d(16, 32, 3, padding=1, groups=16)  # depthwise with multiplier 2
        self.gn = nn.GroupNorm(8, 32)
        self.out = nn.Conv2d(32, 4, 1)

    def forward(self, x):
        x = F.relu(self.grouped(F.relu(self.pw(x))))
        x = self.gn(self.dw(x))
        return self.out(F.gelu(x)).mean((2, 3))


class SqueezeExcite(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 3, padding=1)
        self.fc1, self.fc2 = nn.Conv2d(12, 4, 1), nn.Conv2d(4, 12, 1)
        self.head = nn.Linear(12, 3)

    def forward(self, x):
        x = F.silu(self.conv(x))
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        x = x * s
        return self.head(x.mean((2, 3)))


class Attention(nn.Module):
    """nn.MultiheadAttention plus a hand-written attention with sdpa, a LayerNorm and an MLP."""

    def __init__(self, dim: int = 16, heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, dim)
        self.mha = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln = nn.LayerNorm(dim)
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp1, self.mlp2 = nn.Linear(dim, 24), nn.Linear(24, dim)
        self.out = nn.Linear(dim, 5)

    def forward(self, tokens):
        x = self.embed(tokens)
        x = x + self.mha(x, x, x, need_weights=False)[0]
        h = self.ln(x)
        b, t, c = h.shape
        q, k, v = self.qkv(h).reshape(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, c))
        x = x + self.mlp2(F.gelu(self.mlp1(x)))
        return self.out(x)


class SharedAndMisc(nn.Module):
    """A parameter shared by two layers, matmul with a raw parameter, pad/interp/select/chunk/permute."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.shared = nn.Conv2d(8, 8, 3, padding=1)
        self.w = nn.Parameter(torch.randn(8, 10) * 0.1)
        self.tc = nn.ConvTranspose2d(10, 6, 2, stride=2)
        self.bn = nn.BatchNorm2d(6)
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        x = F.relu(self.c1(x))
        x = F.relu(self.shared(x))
        x = F.relu(self.shared(x))
        x = F.pad(x, (1, 1, 1, 1))
        x = (x.permute(0, 2, 3, 1) @ self.w).permute(0, 3, 1, 2)
        x = F.interpolate(F.relu(x), scale_factor=0.5, mode="nearest")
        x = self.bn(self.tc(x))
        a, b = x.chunk(2, dim=1)
        y = a * torch.tanh(b)
        return self.head(y.amax((2, 3)))


class Conv1d3d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(4, 8, 3, padding=1)
        self.n1 = nn.InstanceNorm1d(8, affine=True)
        self.c2 = nn.Conv1d(8, 6, 3, padding=1)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        x = F.relu(self.n1(self.c1(x)))
        x = F.max_pool1d(F.relu(self.c2(x)), 2)
        return self.fc(x.mean(-1))


class Conv3d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv3d(2, 6, 3, padding=1), nn.BatchNorm3d(6)
        self.c2 = nn.Conv3d(6, 4, 1)

    def forward(self, x):
        return self.c2(F.relu(self.b1(self.c1(x)))).sum((2, 3, 4))


class Bmm(nn.Module):
    """Two activations multiplied (a bilinear interaction): zero-invariance needs a zero operand."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 8), nn.Linear(6, 8)
        self.c = nn.Linear(6, 8)
        self.out = nn.Linear(5, 3)

    def forward(self, x):  # x: (B, T, 6)
        s = torch.bmm(self.a(x), self.b(x).transpose(1, 2))  # contracts a's and b's channels
        u = torch.einsum("btc,bsc->bts", torch.sigmoid(self.c(x)), torch.sigmoid(self.c(x)))  # not zero: pinned
        return self.out(s + u)


CASES = [
    ("conv_chain", ConvChain, [(2, 3, 8, 8)], torch.float32),
    ("residual", Residual, [(2, 3, 8, 8)], torch.float32),
    ("concat_split", Concat, [(2, 3, 8, 8)], torch.float32),
    ("grouped_depthwise", GroupedDepthwise, [(2, 3, 8, 8)], torch.float32),
    ("squeeze_excite", SqueezeExcite, [(2, 3, 8, 8)], torch.float32),
    ("attention", Attention, [(2, 7)], torch.int64),
    ("shared_misc", SharedAndMisc, [(2, 3, 8, 8)], torch.float32),
    ("conv1d", Conv1d3d, [(2, 4, 10)], torch.float32),
    ("conv3d", Conv3d, [(2, 2, 4, 4, 4)], torch.float32),
    ("bmm", Bmm, [(2, 5, 6)], torch.float32),
]


def inputs(shapes, dtype, batch=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for s in shapes:
        s = (batch, *s[1:]) if batch else s
        out.append(torch.randn(s, generator=g) if dtype.is_floating_point else torch.randint(0, 20, s, generator=g))
    return tuple(out)


def relative_to_absolute(x: torch.Tensor, w: int) -> torch.Tensor:
    """(N, w, 2w-1) logits by relative offset -> (N, w, w) by absolute position."""
    n = x.shape[0]
    x = F.pad(F.pad(x, [0, 1]).flatten(1), [0, w - 1])
    return x.reshape(n, w + 1, 2 * w - 1)[:, :w, w - 1:]


class RelPosAttention(nn.Module):
    """BoTNet-style attention: heads folded into the batch, relative-position logits by pad and reshape
    (``[B*heads, H, 1, W, W]``), added to the query-key logits."""

    def __init__(self, c: int, heads: int, h: int, w: int) -> None:
        super().__init__()
        self.heads, self.h, self.w, self.d = heads, h, w, c // heads
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.rel_w = nn.Parameter(torch.randn(2 * w - 1, self.d) * 0.1)
        self.rel_h = nn.Parameter(torch.randn(2 * h - 1, self.d) * 0.1)
        self.proj = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        bh = B * self.heads
        q, k, v = self.qkv(x).split([C, C, C], dim=1)
        q = q.reshape(bh, self.d, H * W).transpose(1, 2)
        k = k.reshape(bh, self.d, H * W)
        v = v.reshape(bh, self.d, H * W).transpose(1, 2)
        attn = q @ k * self.d ** -0.5
        grid = q.reshape(bh, H, W, self.d)
        rw = relative_to_absolute((grid @ self.rel_w.t()).reshape(-1, W, 2 * W - 1), W)
        rw = rw.reshape(bh, H, 1, W, W).expand(-1, -1, H, -1, -1).permute(0, 1, 3, 2, 4)
        rh = relative_to_absolute((grid.transpose(1, 2) @ self.rel_h.t()).reshape(-1, H, 2 * H - 1), H)
        rh = rh.reshape(bh, W, 1, H, H).expand(-1, -1, W, -1, -1).permute(0, 3, 1, 4, 2)
        attn = attn + (rw + rh).reshape(bh, H * W, H * W)
        out = (attn.softmax(-1) @ v).transpose(1, 2).reshape(B, C, H, W)
        return self.proj(out)
