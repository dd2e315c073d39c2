"""Mixture-of-experts products: a grouped matrix product of the tokens routed to each expert
with that expert's weights, ``out[s] = input[s] @ weight[expert of s]``.

HuggingFace stores the experts of a layer as 3-D parameters (``gate_up_proj [E, 2I, H]``,
``down_proj [E, H, I]``), sorts the (token, expert) pairs by expert, and multiplies each
expert's rows with its slice: ``transformers::grouped_mm_fallback`` (what ``torch.export``
captures on CPU and for float32), or ``aten._grouped_mm`` (CUDA, bfloat16).

Channels: the contracted dim of the input is the weight's middle dim, and the weight's last
dim is minted as channels, like a linear layer's rows. Every expert's slice along that dim
shares one id: the experts' outputs flow through one ``[tokens * top_k, I]`` activation, so
the built network keeps one intermediate width for every expert, and channel c of a layer is
one group made of channel c of each of its experts (exact: once every expert's slice is
zero, the channel is zero for whichever expert a token went to).

The expert dim is pinned: an expert is not removable on its own, because the router's
softmax and top-k choose among every expert's logit, and an expert whose weights are zero is
still chosen (its logit is not minus infinity) — removing it would send tokens to other experts.
"""

from __future__ import annotations

import math
from typing import Any

from torch import fx

from ._code import Call, Expr, fn, method
from ._common import arg, unknown
from ._context import Dims, FlowContext
from ._rule import OpRule, register

__all__ = ["GroupedMm", "EXPERT_PIN"]

EXPERT_PIN = ("experts are not removed whole: the router's softmax and top-k pick among every expert's logit, "
              "and an expert whose weights are zero is still picked (its zero output replaces another expert's), "
              "so removing it would change the output")


def _grouped_flow(ctx: FlowContext, node: fx.Node, x: Any, w: Any, offs: Any) -> Dims:
    X, W = ctx.dims(x), ctx.dims(w)
    if X is None or W is None or len(X) != 2 or len(W) != 3 or offs is None or w not in ctx.param_derived:
        return unknown(ctx, node)  # only the MoE form: 2-D tokens times 3-D expert weights
    ctx.union(X[1], W[1])
    ctx.mint(W[0])  # one channel per expert, so that the summary says why experts stay
    ctx.pin(W[0], EXPERT_PIN)
    O = ctx.dims(offs)
    if O is not None and len(O) == 1:
        ctx.union(W[0], O[0])  # the products that share the routing (offsets) share the experts: one family
    out = ctx.mint(W[2])
    ctx.zero_out[node] = {1}  # a zeroed channel of every expert gives a zero output column
    return [X[0], out]


def _grouped_code(c: Call, x: str, w: str, offs: str) -> Expr:
    """Each expert's rows (``offs`` ends them) times its weight, concatenated: what the fallback
    computes, with torch alone."""
    rows = method(c.e(x), "tensor_split", f"{c.e(offs).recv}[:-1].tolist()")
    return fn("torch.cat", f"[_rows @ {c.e(w).recv}[_e] for _e, _rows in enumerate({rows.text})]")


@register("transformers.grouped_mm_fallback.default", "aten._grouped_mm")
class GroupedMm(OpRule):
    """``grouped_mm(input [S, K], weight [E, K, N], offs [E]) -> [S, N]``, rows sorted by expert."""

    def flow(self, ctx: FlowContext, node: fx.Node) -> Dims:
        if str(node.target).startswith("aten.") and (arg(node, 3, "bias") is not None):
            return unknown(ctx, node)
        return _grouped_flow(ctx, node, node.args[0], node.args[1], arg(node, 2, "offs"))

    def flops(self, node: fx.Node, out: list[int], ins: list[Any]) -> int:
        # every (token, chosen expert) row is multiplied once: tokens * top_k * K * N
        return math.prod(out) * ins[0][-1]

    def code(self, c: Call) -> Expr | None:
        if str(c.target).startswith("aten."):
            if c["bias"] is not None or c["out_dtype"] is not None:
                return None
            return _grouped_code(c, "self", "mat2", "offs")
        return _grouped_code(c, "input", "weight", "offs")
