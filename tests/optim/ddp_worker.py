"""Run by test_optim_ddp.py under torchrun: DHSPG on a DDP-wrapped TinyNet, two CPU ranks (gloo).

Each rank trains on its own batches, so only DDP's all-reduce keeps the gradients equal; the
redundancy score is made rank-dependent on purpose, so the ranks agree on G_r only if the
optimizer broadcasts rank 0's choice. Writes the final parameters and zero groups per rank.
"""

from __future__ import annotations

import gc
import os
import sys
import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F
from optim_helpers import tiny_batch, tiny_space
from torch.nn.parallel import DistributedDataParallel

from otonas.optim import DHSPG, ForcedProjectionWarning, GroupStats, RedundancyScore


class RankScore(RedundancyScore):
    """Rank 0 prefers the first groups, every other rank the last ones."""

    def __call__(self, stats: GroupStats) -> torch.Tensor:
        order = torch.arange(stats.dot.numel(), dtype=torch.float64)
        return -order if dist.get_rank() == 0 else order


def main(out: str, variants: list[str]) -> None:
    if os.environ.get("OTONAS_TEST_LOOPS_FOR_SMALL") == "1":  # the fused loops take the tiny weights too
        from otonas.optim import _kernels

        _kernels.MIN_NUMEL = 0
    dist.init_process_group("gloo")
    for variant in variants:
        run(out, variant)
        gc.collect()  # the variant's DDP reducer goes before the next one is made
        dist.barrier()
    # Tear down only once every rank is done with gloo: a rank that destroys the group while
    # the other still has a DDP reducer or a collective in flight aborts in C++
    # ("terminate called without an active exception").
    dist.destroy_process_group()


def run(out: str, variant: str) -> None:
    rank = dist.get_rank()
    space = tiny_space(family=False)  # same seed: same initial weights on every rank
    model = DistributedDataParallel(space.model)
    opt = DHSPG(space, schedule="half_space", lr=0.05, variant=variant, momentum=0.9, weight_decay=1e-3, target_group_sparsity=4 / 9,
                warmup_steps=2, end_step=6, lmbda=0.5, score=RankScore())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ForcedProjectionWarning)
        for step in range(10):
            x, y = tiny_batch(seed=100 * rank + step)
            F.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad()
    torch.save({"params": {n: p.detach() for n, p in space.model.named_parameters()},
                "zero": opt.zero_groups(), "redundant": opt.redundant_groups, "metrics": opt.metrics()},
               f"{out}/{variant}-rank{rank}.pt")
    del model, opt


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
