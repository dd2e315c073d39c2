"""Prune a ResNet on scikit-learn's digits from Python: analyze, train once with DHSPG, build.

    python examples/prune_resnet_digits.py [--epochs N]
"""

import argparse

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

import otonas
import search_spaces

parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
parser.add_argument("--epochs", type=int, default=12, help="training epochs (default 12)")
args = parser.parse_args()

torch.manual_seed(0)
digits = load_digits()
x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
y = torch.tensor(digits.target)
perm = torch.randperm(len(y))
train, val = perm[:1400], perm[1400:]

model = search_spaces.create("resnet20", size="tiny", in_chans=1, num_classes=10)
space = otonas.analyze(model, (x[:2],))          # which channels can go, found from the graph
print(space.summary())

epochs, batch = args.epochs, 64
steps = epochs * (len(train) // batch)
opt = otonas.DHSPG(space, lr=0.1, momentum=0.9, weight_decay=1e-4, target_group_sparsity=0.5,
                   warmup_steps=steps // 4, end_step=3 * steps // 4)
for epoch in range(epochs):
    model.train()
    for idx in train[torch.randperm(len(train))].split(batch)[:-1]:
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(x[val]).argmax(1) == y[val]).float().mean().item()
    print(f"epoch {epoch + 1}: loss {loss.item():.3f}, val accuracy {acc:.3f}, "
          f"group sparsity {opt.group_sparsity():.2f}")

plan = space.plan()                              # what goes: the zero groups, read once
subnet = otonas.build(space, plan)               # the zero groups are gone
with torch.no_grad():
    same = torch.equal(model(x[val]).argmax(1), subnet(x[val]).argmax(1))
before, after = plan.before, plan.after
print(f"params {before.params:,} -> {after.params:,}, FLOPs {before.flops:,} -> {after.flops:,}, "
      f"same predictions: {same}")
