"""Search the DARTS-style supernet from Python: H2SPG erases half of the candidate operators
while it trains, keeping the network connected, then the discovered network is built.

    python examples/search_darts.py [--epochs N]
"""

import argparse

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

import otonas
import search_spaces
from otonas.optim import H2SPG

parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
parser.add_argument("--epochs", type=int, default=12, help="training epochs (default 12)")
args = parser.parse_args()

torch.manual_seed(0)
digits = load_digits()
x = (torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0 - 0.3) / 0.4
y = torch.tensor(digits.target)
perm = torch.randperm(len(y))
train, val = perm[:1400], perm[1400:]

supernet = search_spaces.create("darts", size="tiny", in_chans=1, num_classes=10)
space = otonas.analyze(supernet, (x[:2],))
print(f"{space.num_erasing_groups} erasing groups, e.g. {space.erasing_groups[0].module}")

epochs, batch = args.epochs, 64
steps = epochs * (len(train) // batch)
opt = H2SPG(space, lr=0.05, momentum=0.9, weight_decay=1e-4, erase_budget=0.5,
            warmup_steps=steps // 4, end_step=3 * steps // 4)
for epoch in range(epochs):
    supernet.train()
    for idx in train[torch.randperm(len(train))].split(batch)[:-1]:
        loss = F.cross_entropy(supernet(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    supernet.eval()
    with torch.no_grad():
        acc = (supernet(x[val]).argmax(1) == y[val]).float().mean().item()
    print(f"epoch {epoch + 1}: val accuracy {acc:.3f}, erased {opt.metrics()['erased_groups']} operators")

erased = space.erasable(space.zero_erasing_groups())
print("erased:", ", ".join(space.erasing_groups[i].module for i in erased.nonzero()[0][:8]), "…")
network = otonas.build(space)  # the discovered architecture, without the erased operators
with torch.no_grad():
    same = torch.equal(supernet(x[val]).argmax(1), network(x[val]).argmax(1))
before, after = space.costs(), space.costs(erased=erased)
print(f"params {before.params:,} -> {after.params:,}; same predictions as the supernet: {same}")
