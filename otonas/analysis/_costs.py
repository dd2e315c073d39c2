"""Multiply-accumulate counts per op, from (possibly reduced) dimension sizes.

"FLOPs" in otonas follow the pruning literature's convention: multiply-accumulates of
convolutions, linear layers, matrix products and attention, per sample (ResNet-50 on
224×224: about 4.1 G). Element-wise ops, norms and pooling are not counted.
"""

from __future__ import annotations

import math
from typing import Any

from torch import fx

from ._registry import FLOP_RULES

rule = FLOP_RULES.register

# Each rule gets (node, out, ins) where out is the list of output dim sizes and ins the
# list of input dim-size lists (None for non-tensor args), all already reduced.


@rule("aten.conv1d", "aten.conv2d", "aten.conv3d", "aten.convolution")
def conv(node: fx.Node, out: list[int], ins: list[Any]) -> int:
    x, w = ins[0], ins[1]
    groups_arg: Any = (node.args[8] if str(node.target).startswith("aten.convolution") else
                       (node.args[6] if len(node.args) > 6 else node.kwargs.get("groups", 1)))
    groups = int(groups_arg)
    transposed = str(node.target).startswith("aten.convolution") and bool(node.args[6])
    if transposed:
        return conv_transpose(node, out, ins)
    del groups  # the weight already holds Cin/groups
    return math.prod(out) * math.prod(w[1:])


@rule("aten.conv_transpose1d", "aten.conv_transpose2d", "aten.conv_transpose3d")
def conv_transpose(node: fx.Node, out: list[int], ins: list[Any]) -> int:
    x, w = ins[0], ins[1]
    return math.prod(x) * math.prod(w[1:])


@rule("aten.linear")
def linear(node: fx.Node, out: list[int], ins: list[Any]) -> int:
    return math.prod(out) * ins[0][-1]


@rule("aten.matmul", "aten.mm", "aten.bmm")
def matmul(node: fx.Node, out: list[int], ins: list[Any]) -> int:
    return math.prod(out) * ins[0][-1]


@rule("aten.addmm", "aten.baddbmm")
def addmm(node: fx.Node, out: list[int], ins: list[Any]) -> int:
    return math.prod(out) * ins[1][-1]


@rule("aten.einsum")
def einsum(node: fx.Node, out: list[int], ins: list[Any]) -> int:
    eq = str(node.args[0]).replace(" ", "")
    sizes: dict[str, int] = {}
    for letters, shape in zip(eq.split("->")[0].split(","), ins[1]):
        for letter, s in zip(letters, shape or []):
            sizes[letter] = max(sizes.get(letter, 1), s)
    return math.prod(sizes.values())


@rule("aten.scaled_dot_product_attention")
def sdpa(node: fx.Node, out: list[int], ins: list[Any]) -> int:
    q, k, v = ins[0], ins[1], ins[2]
    batch = math.prod(q[:-2])
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])
