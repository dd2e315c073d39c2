"""``scaled_dot_product_attention``: heads of q, k and v are one space (with ``enable_gqa``,
each key/value head with its group of query heads, or query-head slots: the ``gqa`` option),
the query·key contraction needs a zero side, attended positions are pinned (softmax over
them); the builder keeps the original scale when the head dim shrinks."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from torch import fx

from ._code import Call, Expr, fn
from ._common import arg, args_of, first, input_of, unknown
from ._context import KV_HEADS_KEPT, BuildContext, Dims, FlowContext
from ._rule import OpRule, register

__all__ = ["ScaledDotProductAttention"]


@register("aten.scaled_dot_product_attention")
class ScaledDotProductAttention(OpRule):
    def flow(self, ctx: FlowContext, node: fx.Node) -> Dims:
        q, k, v = args_of(node)[:3]
        Q, K, V = ctx.dims(q), ctx.dims(k), ctx.dims(v)
        assert Q is not None and K is not None and V is not None
        if not (len(Q) == len(K) == len(V)):
            return unknown(ctx, node)
        gqa = bool(arg(node, 7, "enable_gqa", False))
        for i in range(len(Q) - 2):
            if len(Q[i]) == len(K[i]) == len(V[i]):
                ctx.union(Q[i], K[i])
                ctx.union(Q[i], V[i])
            elif gqa and i == len(Q) - 3 and len(K[i]) == len(V[i]) and len(Q[i]) % len(K[i]) == 0:
                _grouped_heads(ctx, Q[i], K[i], V[i])
            else:
                ctx.pin(Q[i], "grouped-query attention heads")
                ctx.pin(K[i], "grouped-query attention heads")
                ctx.pin(V[i], "grouped-query attention heads")
        ctx.union(Q[-1], K[-1])
        ctx.require_zero([(q, len(Q) - 1), (k, len(K) - 1)], "query·key contraction in attention")
        ctx.union(K[-2], V[-2])
        ctx.pin(K[-2], "softmax over attended positions")
        mask = ctx.dims(arg(node, 3, "attn_mask"))
        if mask is not None:
            n = len(Q)
            full = [*Q[:-1], K[-2]]
            for j, m in enumerate(mask):
                i = n - len(mask) + j
                if i >= 0 and len(m) == len(full[i]):
                    ctx.union(m, full[i])
        return [*Q[:-1], V[-1]]

    def rewrite(self, ctx: BuildContext, node: fx.Node, args: list[Any], kwargs: dict[str, Any]) -> Any:
        q = input_of(node)
        e_orig, e_new = ctx.orig(q)[-1], first(ctx.sizes(q))[-1]
        scale = args[6] if len(args) > 6 else kwargs.get("scale")
        if e_orig != e_new and scale is None:
            # the default scale is 1/sqrt(head dim): keep the original one
            if len(args) > 6:
                args[6] = 1.0 / math.sqrt(e_orig)
            else:
                kwargs["scale"] = 1.0 / math.sqrt(e_orig)
        return node.target, args, kwargs

    def flops(self, node: fx.Node, out: list[int], ins: list[Any]) -> int:
        q, k, v = ins[0], ins[1], ins[2]
        batch = math.prod(q[:-2])
        return batch * q[-2] * k[-2] * (q[-1] + v[-1])

    def code(self, c: Call) -> Expr:
        kw = c.changed("attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
        p = c.owner.attention_dropout(c.node)
        if p:
            kw = [k for k in kw if not k.startswith("dropout_p=")] + [f"dropout_p={p!r} if self.training else 0.0"]
        return fn("F.scaled_dot_product_attention", c.e("query"), c.e("key"), c.e("value"), *kw)


def _grouped_heads(ctx: FlowContext, Q: np.ndarray, K: np.ndarray, V: np.ndarray) -> None:
    """``enable_gqa=True``: query head h reads key/value head h // n_rep (torch repeats k and v
    with ``repeat_interleave``). With ``gqa="kv"`` a key/value head and its n_rep query heads are
    one unit; with ``gqa="query"``, or with a single key/value head, query head j of every group
    is one unit (the groups keep equal sizes) and the key/value heads stay."""
    kv = len(K)
    ctx.union(K, V)
    grid = Q.reshape(kv, len(Q) // kv)
    if ctx.gqa == "kv" and kv > 1:
        ctx.ids.union(Q, np.repeat(K, grid.shape[1]))
        return
    if kv > 1:
        ctx.pin(K, KV_HEADS_KEPT)
        ctx.ids.union(grid[1:].ravel(), np.tile(grid[0], kv - 1))
