"""A tiny Llama-style model on the Python standard library's sources: validation perplexity of
dense training, otonas (DHSPG removes heads and MLP channels while training), magnitude
pruning then fine-tuning, and random pruning then fine-tuning — same data, same steps, and for
the three pruned ones the same architecture (equal parameters and FLOPs); the step cost of
DHSPG against AdamW; and what the pruned model generates.

    python bench/bench_llm.py --seeds 5                  # the table in bench/README.md
    python bench/bench_llm.py --seeds 1 --steps 60       # a quick look

Methods, per seed (one init per seed, shared by all methods):

- ``dense``: AdamW for all steps.
- ``otonas``: DHSPG (AdamW base, progressive schedule) at ``--sparsity`` of every family's
  groups: warm-up a tenth of the steps, projection over the next half, then training the final
  structure.
- ``magnitude``: AdamW dense until the step where otonas's projection ends, then in every family
  the groups of smallest L2 norm are removed — as many as otonas removed in that family, so the
  architecture is the same — and training goes on with them held at zero (the criterion of
  Torch-Pruning's ``MagnitudeImportance(p=2)``, applied here through otonas's own groups:
  Torch-Pruning itself is not run on this HF model).
- ``random``: the same with a random choice of groups per family.

The corpus is read as bytes (vocabulary 256); every tenth file validates. One thread (the
machine is shared); the load average is printed.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import otonas
from otonas.testing import stdlib_text, zero_groups_

otonas.prepare_torchvision()
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

METHODS = ("dense", "otonas", "magnitude", "random")


def make_model(seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=352, num_hidden_layers=4,
                                        num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=512,
                                        tie_word_embeddings=False))


def logits_of(out: Any) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out["logits"] if isinstance(out, dict) else out[0]


@torch.no_grad()
def perplexity(net: Any, data: torch.Tensor, seq: int, n: int = 96) -> float:
    starts = torch.linspace(0, len(data) - seq - 2, n).long()
    windows = torch.stack([data[s:s + seq + 1] for s in starts.tolist()])
    total = 0.0
    for chunk in windows.split(16):
        total += float(F.cross_entropy(logits_of(net(chunk[:, :-1])).reshape(-1, 256), chunk[:, 1:].reshape(-1),
                                       reduction="sum"))
    return math.exp(total / windows[:, 1:].numel())


class Run:
    def __init__(self, args: argparse.Namespace, train: torch.Tensor, seed: int) -> None:
        self.args, self.train, self.seed = args, train, seed
        self.steps = args.steps
        self.start, self.end = self.steps // 10, self.steps // 10 + self.steps // 2

    def batches(self):
        gen = torch.Generator().manual_seed(1000 + self.seed)  # the same batches for every method
        for _ in range(self.steps):
            starts = torch.randint(0, len(self.train) - self.args.seq - 1, (self.args.batch,), generator=gen)
            yield torch.stack([self.train[s:s + self.args.seq + 1] for s in starts.tolist()])

    def fit(self, model: LlamaForCausalLM, opt: torch.optim.Optimizer, on_step=None) -> None:
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.args.lr, total_steps=self.steps, pct_start=0.1)
        model.train()
        for i, xy in enumerate(self.batches()):
            loss = F.cross_entropy(logits_of(model(xy[:, :-1])).reshape(-1, 256), xy[:, 1:].reshape(-1))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            if on_step is not None:
                on_step(i + 1)
        model.eval()


def example(train: torch.Tensor, seq: int) -> torch.Tensor:
    return torch.stack([train[:seq], train[seq:2 * seq]])


def adamw(model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)


def per_family_counts(space: otonas.SearchSpace, mask: np.ndarray) -> list[tuple[np.ndarray, int]]:
    return [(np.asarray(f.groups), int(mask[list(f.groups)].sum())) for f in space.families if f.groups]


def run_seed(args: argparse.Namespace, train: torch.Tensor, val: torch.Tensor, seed: int) -> dict[str, Any]:
    run = Run(args, train, seed)
    out: dict[str, Any] = {"seed": seed}
    # otonas
    model = make_model(seed)
    space = otonas.analyze(model, (example(train, args.seq),))
    opt = otonas.DHSPG(space, variant="adamw", lr=args.lr, weight_decay=0.01, target_group_sparsity=args.sparsity,
                       warmup_steps=run.start, end_step=run.end)
    t = time.perf_counter()
    run.fit(model, opt)
    removed = space.removable(space.zero_groups())
    subnet = otonas.build(space)
    out["otonas"] = {"ppl": perplexity(subnet, val, args.seq), "params": sum(p.numel() for p in subnet.parameters()),
                     "flops": space.costs(removed).flops, "seconds": time.perf_counter() - t,
                     "forced": int(opt.metrics().get("num_forced_groups", 0))}
    counts = per_family_counts(space, removed)
    full = space.costs()
    out["params_dense"], out["flops_dense"] = full.params, full.flops
    zeroed_text = generate(model, b"def __init__(self")
    otonas.build(space, inplace=True)  # the model keeps its class: generate() with its cache
    out["otonas"]["generates"] = generate(model, b"def __init__(self")
    out["otonas"]["generates_as_zeroed"] = out["otonas"]["generates"] == zeroed_text
    # dense
    model = make_model(seed)
    run.fit(model, adamw(model, args.lr))
    out["dense"] = {"ppl": perplexity(model, val, args.seq), "params": full.params, "flops": full.flops}
    # magnitude / random: prune at the step where otonas's projection ended, then train on with them at zero
    for method in ("magnitude", "random"):
        model = make_model(seed)
        sp = otonas.analyze(model, (example(train, args.seq),))
        rng = np.random.default_rng(seed)
        chosen = np.zeros(sp.num_prunable_groups, dtype=bool)

        def on_step(i: int, sp: otonas.SearchSpace = sp, chosen: np.ndarray = chosen, rng: Any = rng,
                    method: str = method) -> None:
            if i == run.end:
                norms = group_norms(sp)
                for members, k in counts:
                    if k:
                        pick = members[np.argsort(norms[members])[:k]] if method == "magnitude" else \
                            rng.choice(members, size=k, replace=False)
                        chosen[pick] = True
            if i >= run.end:
                zero_groups_(sp, chosen)

        run.fit(model, adamw(model, args.lr), on_step)
        sub = otonas.build(sp, removed=sp.removable(chosen))
        out[method] = {"ppl": perplexity(sub, val, args.seq), "params": sum(p.numel() for p in sub.parameters()),
                       "flops": sp.costs(sp.removable(chosen)).flops}
    return out


def group_norms(space: otonas.SearchSpace) -> np.ndarray:
    """The L2 norm of every prunable group over all its parameter slices."""
    sq = np.zeros(space.num_prunable_groups)
    params = dict(space.model.named_parameters(remove_duplicate=False))
    for fqn, entries in space.group_layout().items():
        p = params[fqn].detach()
        for dim, g in entries:
            per = p.pow(2).sum(dim=[d for d in range(p.dim()) if d != dim]).double().numpy()
            ok = g >= 0
            np.add.at(sq, g[ok], per[ok])
    return np.sqrt(sq)


@torch.no_grad()
def generate(model: LlamaForCausalLM, prompt: bytes, new: int = 48) -> str:
    out = model.generate(torch.tensor([list(prompt)]), max_new_tokens=new, do_sample=False, pad_token_id=0)
    return bytes(out[0, len(prompt):].tolist()).decode("utf-8", "replace")


def step_cost(args: argparse.Namespace, train: torch.Tensor, repeats: int = 7) -> dict[str, float]:
    """Median step time of DHSPG (mid-projection) over AdamW's, each on its own copy of the same
    model (its own parameters and gradients), alternated in one process."""
    base_model, otonas_model = make_model(0), make_model(0)
    space = otonas.analyze(otonas_model, (example(train, args.seq),))
    runs = [(base_model, adamw(base_model, args.lr)),
            (otonas_model, otonas.DHSPG(space, variant="adamw", lr=args.lr, weight_decay=0.01,
                                        target_group_sparsity=args.sparsity, warmup_steps=0, end_step=10 * repeats))]
    xy = torch.stack([train[i * 1000:i * 1000 + args.seq + 1] for i in range(args.batch)])

    def step(model: LlamaForCausalLM, opt: torch.optim.Optimizer) -> float:
        t = time.perf_counter()
        loss = F.cross_entropy(logits_of(model(xy[:, :-1])).reshape(-1, 256), xy[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        return time.perf_counter() - t

    for run in runs:
        step(*run)
    times: list[list[float]] = [[], []]
    for _ in range(repeats):
        for i, run in enumerate(runs):
            times[i].append(step(*run))
    a, d = statistics.median(times[0]), statistics.median(times[1])
    return {"adamw_s": a, "dhspg_s": d, "ratio": d / a}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--sparsity", type=float, default=0.4)
    ap.add_argument("--corpus-mb", type=float, default=4.0)
    ap.add_argument("--out", default="bench/results/llm.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"load average {open('/proc/loadavg').read().split()[0]}", file=sys.stderr)
    train, val = stdlib_text(int(args.corpus_mb * 2**20))
    results = {"args": vars(args), "step_cost": step_cost(args, train), "seeds": []}
    print("step cost:", json.dumps(results["step_cost"]), flush=True)
    for seed in range(args.seeds):
        r = run_seed(args, train, val, seed)
        results["seeds"].append(r)
        print(json.dumps({k: (v if not isinstance(v, dict) else {kk: vv for kk, vv in v.items() if kk != "generates"})
                          for k, v in r.items()}), flush=True)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1))
    print("\n| method | val perplexity (mean ± std) | params | FLOPs/token |")
    print("|---|---|---|---|")
    for m in METHODS:
        ppl = [s[m]["ppl"] for s in results["seeds"]]
        sd = statistics.stdev(ppl) if len(ppl) > 1 else 0.0
        print(f"| {m} | {statistics.mean(ppl):.3f} ± {sd:.3f} | {results['seeds'][0][m]['params']:,} | "
              f"{results['seeds'][0][m]['flops'] // args.seq:,} |")
    if len(results["seeds"]) > 1:
        for m in ("magnitude", "random"):
            d = [s[m]["ppl"] - s["otonas"]["ppl"] for s in results["seeds"]]
            print(f"paired {m} − otonas: {statistics.mean(d):+.3f} ± {statistics.stdev(d):.3f}")
    first = results["seeds"][0]["otonas"]
    print("otonas, built in place, generates:", repr(first["generates"]),
          "(the same as the zeroed model)" if first["generates_as_zeroed"] else "(NOT the zeroed model's tokens)")


if __name__ == "__main__":
    main()
