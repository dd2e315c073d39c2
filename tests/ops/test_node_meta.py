"""Node metadata has one owner, otonas.ops' module_path / module_stack / source_node / copy_meta."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

import otonas
from otonas.ops import module_path, module_stack, node_shape, source_node

ROOT = Path(__file__).resolve().parents[2]


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)))


def test_built_nodes_name_the_analysed_node_they_came_from_and_its_module() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 1), Block(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()
    space = otonas.analyze(net, (torch.randn(2, 3, 8, 8),))
    analysed = {n.name: n for n in space.capture.program.graph.nodes}
    conv = next(n for n in analysed.values() if n.op == "call_function" and "conv" in str(n.target)
                and module_path(n) == "1.conv")
    assert [p for p, _ in module_stack(conv)] == ["", "1", "1.conv"]
    assert node_shape(conv.meta["val"]) == (2, 8, 8, 8)
    sub = otonas.build(space)
    calls = [n for n in sub.graph.nodes if n.op == "call_function"]
    named = [n for n in calls if source_node(n) is not None]
    assert named, "the builder names no source node"
    for n in named:
        src = analysed[source_node(n)]
        assert module_path(n) == module_path(src), n.name
        assert module_stack(n) == module_stack(src), n.name


def test_no_module_but_the_owner_reads_the_meta_keys() -> None:
    """``nn_module_stack`` and ``otonas_source_node`` are read and written in otonas/ops/_meta.py only."""
    keys = re.compile(r"""["'](nn_module_stack|otonas_source_node)["']""")
    found = [f"{p.relative_to(ROOT)}:{i}" for p in sorted((ROOT / "otonas").rglob("*.py"))
             if p.name != "_meta.py"
             for i, line in enumerate(p.read_text().splitlines(), 1) if keys.search(line)]
    assert not found, found
    assert keys.search((ROOT / "otonas" / "ops" / "_meta.py").read_text())
