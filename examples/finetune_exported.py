"""Fine-tune the network an `otonas search` exported: load its model.py and weights, train a few
more epochs with a plain PyTorch optimizer, save the new weights beside the old ones.

    otonas search --model search_spaces:resnet20 --mode prune --epochs 4 --out runs/r20
    python examples/finetune_exported.py --run runs/r20 [--epochs N]

`otonas.load` imports the run folder's model.py, which is Python code: load only folders you
trust (your own runs), as you would only import modules you trust.
"""

import argparse
import json
import math
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch.utils.data import DataLoader

import otonas
from otonas.search import load_data

parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
parser.add_argument("--run", default="otonas-out", help="the run folder (default otonas-out)")
parser.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs (default 3)")
parser.add_argument("--lr", type=float, default=0.05, help="starting learning rate, cosine to 0 (default 0.05)")
args = parser.parse_args()

# the data and split of the search: its options are stored in report.json
cfg = json.load(open(os.path.join(args.run, "report.json")))["config"]
data = load_data(cfg["data"], seed=cfg["seed"], val_fraction=cfg["val_fraction"])
net = otonas.load(args.run)  # eval mode; BatchNorm uses batch statistics again after .train()


def accuracy() -> float:
    net.eval()
    correct = 0
    with torch.no_grad():
        for x, y in DataLoader(data.val, batch_size=256):
            correct += int((net(x).argmax(1) == y).sum())
    return correct / len(data.val)


print(f"loaded {args.run}: {sum(p.numel() for p in net.parameters()):,} parameters, val accuracy {accuracy():.4f}")
opt = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
loader = DataLoader(data.train, batch_size=cfg["batch_size"], shuffle=True,
                    generator=torch.Generator().manual_seed(cfg["seed"]))
total, step = args.epochs * len(loader), 0
for epoch in range(args.epochs):
    net.train()
    for x, y in loader:
        for group in opt.param_groups:
            group["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * step / total))
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
    print(f"epoch {epoch + 1}: loss {loss.item():.3f}, val accuracy {accuracy():.4f}")

weights = os.path.join(args.run, "model.finetuned.safetensors")
save_file({k: v.detach().contiguous() for k, v in net.state_dict().items()}, weights)
again = otonas.load(weights)  # the same model.py, the new weights
print(f"wrote {weights}; otonas.load({weights!r}) gives the same network "
      f"({sum(p.numel() for p in again.parameters()):,} parameters)")
