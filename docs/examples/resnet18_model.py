"""ResNet after otonas 0.1.0 removed its zero channels: plain PyTorch, no otonas needed.

Parameters 11,689,512 -> 5,898,132; FLOPs (MACs per sample) 1,814,073,344 -> 920,590,853.

Made by: otonas verify torchvision:resnet18 --fraction 0.3 --export out

Layers keep the module paths of torchvision.models.resnet.ResNet, so the names in
model.safetensors are the original ones. To use it (torch and safetensors only)::

    import model
    net = model.load()  # reads model.safetensors next to this file
"""

import json
import math
import mmap
import os
import zlib

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ResNet", "load"]


class ResNet(nn.Module):
    """ResNet as otonas built it; names follow the original torchvision.models.resnet.ResNet."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 48, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(48)
        self.layer1 = nn.ModuleList([
            nn.ModuleDict(dict(  # BasicBlock
                conv1=nn.Conv2d(48, 47, 3, padding=1, bias=False),
                bn1=nn.BatchNorm2d(47),
                conv2=nn.Conv2d(47, 48, 3, padding=1, bias=False),
                bn2=nn.BatchNorm2d(48),
            )),
            nn.ModuleDict(dict(  # BasicBlock
                conv1=nn.Conv2d(48, 40, 3, padding=1, bias=False),
                bn1=nn.BatchNorm2d(40),
                conv2=nn.Conv2d(40, 48, 3, padding=1, bias=False),
                bn2=nn.BatchNorm2d(48),
            )),
        ])
        self.layer2 = nn.ModuleList([
            nn.ModuleDict(dict(  # BasicBlock
                conv1=nn.Conv2d(48, 95, 3, stride=2, padding=1, bias=False),
                bn1=nn.BatchNorm2d(95),
                conv2=nn.Conv2d(95, 88, 3, padding=1, bias=False),
                bn2=nn.BatchNorm2d(88),
                downsample=nn.ModuleList([nn.Conv2d(48, 88, 1, stride=2, bias=False), nn.BatchNorm2d(88)]),
            )),
            nn.ModuleDict(dict(  # BasicBlock
                conv1=nn.Conv2d(88, 84, 3, padding=1, bias=False),
                bn1=nn.BatchNorm2d(84),
                conv2=nn.Conv2d(84, 88, 3, padding=1, bias=False),
                bn2=nn.BatchNorm2d(88),
            )),
        ])
        self.layer3 = nn.ModuleList([
            nn.ModuleDict(dict(  # BasicBlock
                conv1=nn.Conv2d(88, 183, 3, stride=2, padding=1, bias=False),
                bn1=nn.BatchNorm2d(183),
                conv2=nn.Conv2d(183, 171, 3, padding=1, bias=False),
                bn2=nn.BatchNorm2d(171),
                downsample=nn.ModuleList([nn.Conv2d(88, 171, 1, stride=2, bias=False), nn.BatchNorm2d(171)]),
            )),
            nn.ModuleDict(dict(  # BasicBlock
                conv1=nn.Conv2d(171, 173, 3, padding=1, bias=False),
                bn1=nn.BatchNorm2d(173),
                conv2=nn.Conv2d(173, 171, 3, padding=1, bias=False),
                bn2=nn.BatchNorm2d(171),
            )),
        ])
        self.layer4 = nn.ModuleList([
            nn.ModuleDict(dict(  # BasicBlock
                conv1=nn.Conv2d(171, 353, 3, stride=2, padding=1, bias=False),
                bn1=nn.BatchNorm2d(353),
                conv2=nn.Conv2d(353, 371, 3, padding=1, bias=False),
                bn2=nn.BatchNorm2d(371),
                downsample=nn.ModuleList([nn.Conv2d(171, 371, 1, stride=2, bias=False), nn.BatchNorm2d(371)]),
            )),
            nn.ModuleDict(dict(  # BasicBlock
                conv1=nn.Conv2d(371, 363, 3, padding=1, bias=False),
                bn1=nn.BatchNorm2d(363),
                conv2=nn.Conv2d(363, 371, 3, padding=1, bias=False),
                bn2=nn.BatchNorm2d(371),
            )),
        ])
        self.fc = nn.Linear(371, 1000)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, stride=2, padding=1)
        # layer1.0 (BasicBlock)
        out = F.relu(self.layer1[0].bn1(self.layer1[0].conv1(x)))
        out = self.layer1[0].bn2(self.layer1[0].conv2(out))
        x = F.relu(out + x)
        # layer1.1 (BasicBlock)
        out = F.relu(self.layer1[1].bn1(self.layer1[1].conv1(x)))
        out = self.layer1[1].bn2(self.layer1[1].conv2(out))
        x = F.relu(out + x)
        # layer2.0 (BasicBlock)
        out = F.relu(self.layer2[0].bn1(self.layer2[0].conv1(x)))
        out = self.layer2[0].bn2(self.layer2[0].conv2(out))
        identity = self.layer2[0].downsample[1](self.layer2[0].downsample[0](x))
        x = F.relu(out + identity)
        # layer2.1 (BasicBlock)
        out = F.relu(self.layer2[1].bn1(self.layer2[1].conv1(x)))
        out = self.layer2[1].bn2(self.layer2[1].conv2(out))
        x = F.relu(out + x)
        # layer3.0 (BasicBlock)
        out = F.relu(self.layer3[0].bn1(self.layer3[0].conv1(x)))
        out = self.layer3[0].bn2(self.layer3[0].conv2(out))
        identity = self.layer3[0].downsample[1](self.layer3[0].downsample[0](x))
        x = F.relu(out + identity)
        # layer3.1 (BasicBlock)
        out = F.relu(self.layer3[1].bn1(self.layer3[1].conv1(x)))
        out = self.layer3[1].bn2(self.layer3[1].conv2(out))
        x = F.relu(out + x)
        # layer4.0 (BasicBlock)
        out = F.relu(self.layer4[0].bn1(self.layer4[0].conv1(x)))
        out = self.layer4[0].bn2(self.layer4[0].conv2(out))
        identity = self.layer4[0].downsample[1](self.layer4[0].downsample[0](x))
        x = F.relu(out + identity)
        # layer4.1 (BasicBlock)
        out = F.relu(self.layer4[1].bn1(self.layer4[1].conv1(x)))
        out = self.layer4[1].bn2(self.layer4[1].conv2(out))
        x = F.relu(out + x)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "C64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
          "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def load(path=None, *, device="cpu", check=True):
    """Build ResNet with the weights of a safetensors file (default: model.safetensors next
    to this file), in eval mode. A truncated or damaged file, or one that does not fit this
    network, raises ValueError naming the tensor; ``check`` also compares each tensor's CRC-32."""
    from safetensors.torch import load_file

    path = path or os.path.join(os.path.dirname(os.path.abspath(__file__)), "model.safetensors")
    with torch.device("meta"):
        model = ResNet()
    shapes = {k: tuple(t.shape) for k, t in model.state_dict().items()}
    header, crc = _read_header(path)
    problems = [f"missing tensor '{k}'" for k in shapes if k not in header]
    problems += [f"unexpected tensor '{k}'" for k in header if k not in shapes]
    problems += [f"tensor '{k}' has shape {tuple(h['shape'])}, model.py expects {shapes[k]}"
                 for k, h in header.items() if k in shapes and tuple(h["shape"]) != shapes[k]]
    if problems:
        raise ValueError(f"{path} does not fit model.py: " + "; ".join(problems))
    if check and crc:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            start = 8 + int.from_bytes(data[:8], "little")
            for k, h in header.items():
                a, b = h["data_offsets"]
                if k in crc and zlib.crc32(data[start + a:start + b]) != crc[k]:
                    raise ValueError(f"{path} is damaged: tensor '{k}' does not match its checksum")
    try:
        state = load_file(path, device=str(device))
    except Exception as e:
        raise ValueError(f"{path} could not be read: {e}") from e
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def _read_header(path):
    """The tensors a safetensors file lists, checked against the file's size, and their CRC-32s."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if size < 8 or 8 + n > size:
            raise ValueError(f"{path} is truncated or not safetensors: its header is incomplete")
        try:
            header = json.loads(f.read(n))
        except ValueError:
            raise ValueError(f"{path} is damaged: its header is not valid JSON") from None
    meta = header.pop("__metadata__", None) or {}
    for k, h in header.items():
        try:
            a, b = h["data_offsets"]
            nbytes = _BYTES[h["dtype"]] * math.prod(h["shape"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path} is damaged: the header of tensor '{k}' is malformed") from None
        if b - a != nbytes:
            raise ValueError(f"{path} is damaged: tensor '{k}' ({h['dtype']} {h['shape']}) "
                             f"should take {nbytes} bytes, the header gives {b - a}")
        if 8 + n + b > size:
            raise ValueError(f"{path} is truncated: tensor '{k}' needs {8 + n + b} bytes, it has {size}")
    return header, json.loads(meta.get("crc32", "{}"))
