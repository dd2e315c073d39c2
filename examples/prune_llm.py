"""Train a tiny Llama-style language model on the Python standard library's own sources and
remove a share of its attention heads and MLP channels while it trains (DHSPG), then build
the smaller model in place (it stays a ``LlamaForCausalLM``), compare validation perplexity
and let it ``generate()``.

    python examples/prune_llm.py [--epochs N] [--sparsity 0.4]

Nothing downloads: the corpus is the ``.py`` files of this Python's standard library, read
as bytes (a 256-symbol vocabulary); the model is built from a config with random weights.
The search space is found from the graph: query/key/value heads (for grouped-query attention
a key/value head with the query heads that read it) and the gated MLP's channels.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F

import otonas
from otonas.testing import stdlib_text

otonas.prepare_torchvision()  # transformers imports torchvision: see docs/transformers.md
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
parser.add_argument("--epochs", type=int, default=6, help="training epochs of --steps-per-epoch steps (default 6)")
parser.add_argument("--steps-per-epoch", type=int, default=100)
parser.add_argument("--sparsity", type=float, default=0.4, help="share of every family's groups to remove (0.4)")
parser.add_argument("--seq", type=int, default=128, help="training sequence length (default 128)")
parser.add_argument("--batch", type=int, default=16)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--corpus-mb", type=float, default=4.0, help="megabytes of the standard library to read (4)")
parser.add_argument("--dense", action="store_true", help="train without pruning (the baseline)")


def batches(data: torch.Tensor, seq: int, batch: int, gen: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, len(data) - seq - 1, (batch,), generator=gen)
    return torch.stack([data[s:s + seq + 1] for s in starts.tolist()])


@torch.no_grad()
def perplexity(net, data: torch.Tensor, seq: int, n: int = 64) -> float:
    """exp(mean next-byte cross-entropy) over ``n`` fixed windows of the validation bytes."""
    starts = torch.linspace(0, len(data) - seq - 2, n).long()
    windows = torch.stack([data[s:s + seq + 1] for s in starts.tolist()])
    losses = []
    for chunk in windows.split(16):
        logits = _logits(net(chunk[:, :-1]))
        losses.append(F.cross_entropy(logits.reshape(-1, 256), chunk[:, 1:].reshape(-1), reduction="sum"))
    return math.exp(float(sum(losses)) / windows[:, 1:].numel())


def _logits(out):
    return out.logits if hasattr(out, "logits") else out["logits"] if isinstance(out, dict) else out[0]


@torch.no_grad()
def greedy(model: LlamaForCausalLM, prompt: bytes, new: int = 60) -> str:
    ids = torch.tensor([list(prompt)])
    out = model.generate(ids, max_new_tokens=new, do_sample=False, pad_token_id=0)
    return bytes(out[0, len(prompt):].tolist()).decode("utf-8", "replace")


def main() -> None:
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    train, val = stdlib_text(int(args.corpus_mb * 2**20))
    print(f"corpus: {len(train):,} training bytes, {len(val):,} validation bytes (standard library sources)")
    config = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=352, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=512,
                         tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    example = batches(train, args.seq, 2, torch.Generator().manual_seed(0))[:, :-1]
    space = otonas.analyze(model, (example,))
    heads = [f for f in space.families if f.groups and f.num_channels == config.num_key_value_heads]
    mlp = [f for f in space.families if f.groups and f.num_channels == config.intermediate_size]
    print(f"search space: {space.num_prunable_groups} prunable groups — {len(heads)} layers of key/value heads "
          f"(each with {config.num_attention_heads // config.num_key_value_heads} query heads), "
          f"{len(mlp)} layers of MLP channels")
    steps = args.epochs * args.steps_per_epoch
    if args.dense:
        opt: torch.optim.Optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    else:  # warm up a tenth, remove groups over the next half in 5 periods, then train the final structure
        opt = otonas.DHSPG(space, variant="adamw", lr=3e-3, weight_decay=0.01, target_group_sparsity=args.sparsity,
                           warmup_steps=steps // 10, end_step=steps // 10 + steps // 2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        for _ in range(args.steps_per_epoch):
            xy = batches(train, args.seq, args.batch, gen)
            loss = F.cross_entropy(model(xy[:, :-1]).logits.reshape(-1, 256), xy[:, 1:].reshape(-1))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
        model.eval()
        extra = "" if args.dense else f", zero groups {int(space.zero_groups().sum())}/{space.num_prunable_groups}"
        print(f"epoch {epoch + 1}/{args.epochs}: train loss {loss.item():.3f}, val perplexity "
              f"{perplexity(model, val, args.seq):.2f}{extra} ({time.perf_counter() - t0:.0f}s)", flush=True)

    model.eval()
    params = sum(p.numel() for p in model.parameters())
    if args.dense:
        print(f"dense: {params:,} parameters, val perplexity {perplexity(model, val, args.seq):.2f}")
        print("generates:", repr(greedy(model, b"def __init__(self")))
        return
    ppl_zeroed, text_zeroed = perplexity(model, val, args.seq), greedy(model, b"def __init__(self")
    otonas.build(space, inplace=True)  # the zero heads and channels are gone from model's own modules
    kept = sum(p.numel() for p in model.parameters())
    attn = model.model.layers[0].self_attn
    print(f"pruned in place: {params:,} -> {kept:,} parameters ({1 - kept / params:.0%} fewer); layer 0 keeps "
          f"{attn.q_proj.out_features // attn.head_dim} query / {attn.k_proj.out_features // attn.head_dim} key-value "
          f"heads, {model.model.layers[0].mlp.up_proj.out_features} MLP channels")
    text = greedy(model, b"def __init__(self")
    print(f"val perplexity {perplexity(model, val, args.seq):.2f} (before the build: {ppl_zeroed:.2f})")
    print(f"generates {text!r}" + (" (the same as before the build)" if text == text_zeroed else
                                   f" (before the build: {text_zeroed!r})"))


if __name__ == "__main__":
    main()
