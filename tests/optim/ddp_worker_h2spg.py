"""Run by test_optim_h2spg.py under torchrun: H2SPG on a DDP-wrapped small supernet, two CPU
ranks (gloo).

Each rank trains on its own batches, so only DDP's all-reduce keeps the gradients equal; the
redundancy score is made rank-dependent on purpose, so the ranks agree on the erased operators
only if the optimizer walks rank 0's scores on every rank. Writes what each rank ended with.
"""

from __future__ import annotations

import gc
import sys
import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F
from h2spg_helpers import Supernet, batch
from torch.nn.parallel import DistributedDataParallel

import otonas
from otonas.optim import H2SPG, GroupStats, RedundancyScore

PLAN = [("sum", 3), ("nested", 2), ("deep", 2)]


class RankScore(RedundancyScore):
    """Rank 0 prefers the first groups, every other rank the last ones."""

    def __call__(self, stats: GroupStats) -> torch.Tensor:
        order = torch.arange(stats.dot.numel(), dtype=torch.float64)
        return -order if dist.get_rank() == 0 else order


def main(out: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)  # same initial weights on every rank
    model = Supernet(PLAN)
    space = otonas.analyze(model, (batch(0)[0],))
    ddp = DistributedDataParallel(model)
    opt = H2SPG(space, schedule="half_space", lr=0.05, momentum=0.9, weight_decay=1e-3, erase_budget=0.3, target_group_sparsity=0.2,
                warmup_steps=3, end_step=7, lmbda=1.0, score=RankScore())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for step in range(10):
            x, y = batch(100 * rank + step)
            F.cross_entropy(ddp(x), y).backward()
            opt.step()
            opt.zero_grad()
    torch.save({"params": {n: p.detach() for n, p in model.named_parameters()},
                "accepted": opt.accepted, "skipped": [tuple(s) for s in opt.skipped],
                "erasing_scores": opt.erasing_scores, "redundant": opt.redundant_groups,
                "zero": opt.zero_groups(), "zero_erasing": opt.zero_erasing_groups(), "metrics": opt.metrics()},
               f"{out}/rank{rank}.pt")
    del ddp, opt
    gc.collect()
    dist.barrier()  # tear down only once every rank is done with gloo (see ddp_worker.py)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
