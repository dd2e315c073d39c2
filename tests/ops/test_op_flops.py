"""One FLOPs counter: ``otonas.ops.op_flops``, used by the analysis' costs and export's per-layer FLOPs."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

import otonas
from otonas.ops import op_flops

ROOT = Path(__file__).resolve().parents[2]


def test_conv_and_linear_count_their_multiply_accumulates() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 5 * 5, 4))
    space = otonas.analyze(model, (torch.randn(2, 3, 5, 5),))
    def shape(m: torch.fx.Node) -> list[int] | None:
        v = m.meta.get("val")
        return list(v.shape) if isinstance(v, torch.Tensor) else None

    per_node = {n.target.__name__.split(".")[0]: op_flops(n, shape)
                for n in space.capture.graph.nodes if n.op == "call_function"}
    batch = 2
    assert per_node["conv2d"] == batch * 8 * 5 * 5 * 3 * 3 * 3
    assert per_node["linear"] == batch * 4 * 200
    assert per_node["relu"] in (None, 0)
    assert space.costs().flops == (per_node["conv2d"] + per_node["linear"]) // batch


def test_rules_flops_are_called_in_one_place() -> None:
    """Every count of an op's FLOPs goes through op_flops (analysis and export counted apart before)."""
    call = re.compile(r"\.flops\(node")
    found = [f"{p.relative_to(ROOT)}:{i}" for p in sorted((ROOT / "otonas").rglob("*.py"))
             if p.name != "_flops.py" and "ops" not in p.relative_to(ROOT).parts[1:2]
             for i, line in enumerate(p.read_text().splitlines(), 1) if call.search(line)]
    assert found == []
    assert call.search((ROOT / "otonas" / "ops" / "_flops.py").read_text())
