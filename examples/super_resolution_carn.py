"""A task other than classification, through the Python API with your own loop:
×2 super-resolution with CARN, channel-pruned by DHSPG, on digits (8×8 → 16×16).

    python examples/super_resolution_carn.py [--epochs N]
"""

import argparse

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

import otonas
import search_spaces

parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
parser.add_argument("--epochs", type=int, default=8, help="training epochs (default 8)")
args = parser.parse_args()

torch.manual_seed(0)
hr = torch.tensor(load_digits().images, dtype=torch.float32).unsqueeze(1) / 16.0
hr = F.interpolate(hr, scale_factor=2, mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)  # (N, 3, 16, 16)
lr_img = F.avg_pool2d(hr, 2)                                                                      # (N, 3, 8, 8)
train, val = torch.arange(1400), torch.arange(1400, len(hr))

model = search_spaces.create("carn", size="tiny")
space = otonas.analyze(model, (lr_img[:2],))
epochs, batch = args.epochs, 50
steps = epochs * (len(train) // batch)
opt = otonas.DHSPG(space, lr=0.01, variant="adam", target_group_sparsity=0.4,
                   warmup_steps=steps // 4, end_step=3 * steps // 4)


def psnr(pred, target):
    return (10 * torch.log10(1.0 / F.mse_loss(pred.clamp(0, 1), target))).item()


for epoch in range(epochs):
    model.train()
    for idx in train[torch.randperm(len(train))].split(batch):
        loss = F.l1_loss(model(lr_img[idx]), hr[idx])  # your loss, your loop
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        print(f"epoch {epoch + 1}: L1 {loss.item():.4f}, val PSNR {psnr(model(lr_img[val]), hr[val]):.2f} dB, "
              f"group sparsity {opt.group_sparsity():.2f}")

plan = space.plan()  # what goes: the zero groups, read once
subnet = otonas.build(space, plan)
with torch.no_grad():
    diff = (model(lr_img[val]) - subnet(lr_img[val])).abs().max().item()
    print(f"subnet PSNR {psnr(subnet(lr_img[val]), hr[val]):.2f} dB, max |full - subnet| = {diff:.2e}")
before, after = plan.before, plan.after
print(f"params {before.params:,} -> {after.params:,}, FLOPs {before.flops:,} -> {after.flops:,}")
