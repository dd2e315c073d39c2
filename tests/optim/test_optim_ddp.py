"""DHSPG under DistributedDataParallel: two CPU ranks (gloo, torchrun) end identical."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from optim_helpers import torchrun

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo")
@pytest.mark.parametrize("loops", [False, True], ids=["pytorch-path", "fused-loops"])
def test_ranks_agree_on_groups_and_parameters(tmp_path: Path, loops: bool) -> None:
    variants = ["sgd", "adamw"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(HERE), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", OTONAS_KERNELS="1" if loops else "0",
               OTONAS_TEST_LOOPS_FOR_SMALL="1" if loops else "0")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "2",
           str(HERE / "ddp_worker.py"), str(tmp_path), *variants]
    torchrun(cmd, env, [str(tmp_path / f"{v}-rank{r}.pt") for v in variants for r in (0, 1)], timeout=180)
    for variant in variants:
        r0, r1 = (torch.load(tmp_path / f"{variant}-rank{r}.pt", weights_only=False) for r in (0, 1))
        for name, p in r0["params"].items():
            assert torch.equal(p, r1["params"][name]), (variant, name)
        assert torch.equal(r0["zero"], r1["zero"]) and torch.equal(r0["redundant"], r1["redundant"])
        # rank 0's score (it prefers the first groups) decided for both ranks
        assert r0["redundant"].nonzero().flatten().tolist() == [0, 1, 2, 3]
        assert r0["zero"].sum() == 4
        assert r0["metrics"]["num_zero_groups"] == r1["metrics"]["num_zero_groups"] == 4
