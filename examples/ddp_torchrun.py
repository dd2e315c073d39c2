"""Train once under torchrun + DistributedDataParallel: every rank takes the same pruning
decisions, so every rank ends with the same zero groups and builds the same subnet.

    torchrun --nproc_per_node 2 examples/ddp_torchrun.py [--epochs N]  # CPU (gloo) or one GPU per rank (nccl)
"""

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch.nn.parallel import DistributedDataParallel as DDP

import otonas
import search_spaces

parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
parser.add_argument("--epochs", type=int, default=6, help="training epochs (default 6)")
args = parser.parse_args()

backend = "nccl" if torch.cuda.is_available() else "gloo"
dist.init_process_group(backend)
rank, world = dist.get_rank(), dist.get_world_size()
device = torch.device(f"cuda:{int(os.environ['LOCAL_RANK'])}" if backend == "nccl" else "cpu")
torch.manual_seed(0)  # same initial weights on every rank

digits = load_digits()
x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
y = torch.tensor(digits.target)
model = search_spaces.create("resnet20", size="tiny", in_chans=1, num_classes=10)
space = otonas.analyze(model, (x[:2],))  # analysis sees the plain model, before DDP wraps it
model.to(device)
ddp = DDP(model)

epochs, batch = args.epochs, 32  # per rank
shard = torch.arange(rank, len(y), world)  # each rank its own slice of the data
steps = epochs * (len(shard) // batch)
opt = otonas.DHSPG(space, lr=0.1, momentum=0.9, lmbda=2.0, target_group_sparsity=0.5,
                   warmup_steps=steps // 4, end_step=3 * steps // 4)
for epoch in range(epochs):
    g = torch.Generator().manual_seed(epoch)
    for idx in shard[torch.randperm(len(shard), generator=g)].split(batch)[:-1]:
        loss = F.cross_entropy(ddp(x[idx].to(device)), y[idx].to(device))
        opt.zero_grad()
        loss.backward()  # DDP averages the gradients: every rank sees the same values
        opt.step()
    if rank == 0:
        print(f"epoch {epoch + 1}: loss {loss.item():.3f}, group sparsity {opt.group_sparsity():.2f}")

zero = torch.tensor(space.zero_groups(), dtype=torch.uint8)
gathered = [torch.empty_like(zero) for _ in range(world)]
dist.all_gather(gathered, zero)
if rank == 0:
    same = all(torch.equal(gathered[0], z) for z in gathered)
    subnet = otonas.build(space)
    print(f"all ranks chose the same zero groups: {same}; "
          f"params {space.costs().params:,} -> {sum(p.numel() for p in subnet.parameters()):,}")
dist.destroy_process_group()
