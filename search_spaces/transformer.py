"""A small Transformer language model: a stack of pre-LayerNorm blocks.

Vaswani et al., Attention Is All You Need, NeurIPS 2017 (arXiv:1706.03762)
for the block (multi-head self-attention and a position-wise MLP, each in a
residual branch), with the pre-LayerNorm placement of GPT-2 (Radford et al.
2019) / Xiong et al. 2020 (arXiv:2002.04745). With ``causal=True`` (the
default) the blocks are decoder blocks without cross-attention (each
position attends to itself and earlier positions); with ``causal=False``
they are encoder blocks.

Input: token ids ``(T,)`` of dtype ``torch.int64`` (batched ``(B, T)``),
``T <= max_len``. Output: logits ``(T, vocab_size)`` (batched ``(B, T, vocab_size)``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._registry import check_size, register

__all__ = ["TransformerBlock", "TransformerLM", "transformer"]


class TransformerBlock(nn.Module):
    """x + MHA(LN(x)), then x + MLP(LN(x)); MLP is Linear-GELU-Linear."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp_ratio * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(mlp_ratio * dim, dim)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, attn_mask=attn_mask, need_weights=False)[0]
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class TransformerLM(nn.Module):
    """Token embedding + learned positions, ``depth`` blocks, LayerNorm, vocab projection.

    Args:
        vocab_size: number of token ids (input ids lie in ``[0, vocab_size)``).
        dim: model width; heads: attention heads (``dim % heads == 0``).
        depth: number of blocks; mlp_ratio: MLP hidden width / dim.
        max_len: longest sequence (size of the position table).
        causal: decoder-style causal self-attention if True, encoder-style if False.
        dropout: attention dropout (0 by default).
    """

    causal_mask: torch.Tensor  # buffer (max_len, max_len), True = may not attend
    positions: torch.Tensor  # buffer arange(max_len)

    def __init__(self, vocab_size: int = 256, dim: int = 256, heads: int = 4, depth: int = 4, *,
                 mlp_ratio: int = 4, max_len: int = 128, causal: bool = True,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.max_len = max_len
        self.causal = causal
        self.tok_emb = nn.Embedding(vocab_size, dim)
        self.pos_emb = nn.Embedding(max_len, dim)
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size)
        # True above the diagonal = "may not attend" (future positions)
        self.register_buffer(
            "causal_mask", torch.ones(max_len, max_len, dtype=torch.bool).triu(1), persistent=False
        )
        self.register_buffer("positions", torch.arange(max_len), persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        t = tokens.shape[1]
        x = self.tok_emb(tokens) + self.pos_emb(self.positions[:t])
        mask = self.causal_mask[:t, :t] if self.causal else None
        for block in self.blocks:
            x = block(x, mask)
        return self.head(self.norm(x))


@register(
    "transformer",
    kind="network",
    input_shape=(32,),
    input_dtype=torch.int64,
    output="logits (T, vocab_size) for token ids (T,); vocab_size=256 (tiny: 32)",
    source="Vaswani et al., NeurIPS 2017 (arXiv:1706.03762) blocks, pre-LN as in GPT-2 / Xiong et al. 2020 (arXiv:2002.04745)",
    default_params=3_323_648,
    tiny_params=8_160,
    paper_params=None,
)
def transformer(size: str = "default", **kwargs) -> TransformerLM:
    """Default: vocab 256 (bytes), dim 256, 4 heads, 4 causal blocks, max_len 128.
    Tiny: vocab 32, dim 16, 2 heads, 2 blocks, max_len 32."""
    if check_size(size) == "default":
        cfg: dict[str, Any] = dict(vocab_size=256, dim=256, heads=4, depth=4, max_len=128)
    else:
        cfg = dict(vocab_size=32, dim=16, heads=2, depth=2, max_len=32)
    cfg.update(kwargs)
    return TransformerLM(**cfg)
