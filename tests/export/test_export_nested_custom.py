"""A child-less custom module (parameters, no sub-modules) nested below the top level: model.py
declares it as an empty container with its class name as a comment, and the comma or closing
paren that follows must land before that comment, not inside it."""

from __future__ import annotations

import torch
from torch import nn

import otonas


class Scale(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.linspace(0.5, 1.5, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.w[:, None, None]


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.scale = Scale(8)
        self.gain = Scale(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gain(self.scale(self.conv(x)))


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = Block()
        self.blocks = nn.ModuleList([Scale(8), Scale(8)])
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks[1](self.blocks[0](self.block(x))))


def test_nested_childless_custom_modules_export_to_code_that_imports(tmp_path):
    torch.manual_seed(0)
    model = Model().eval()
    x = torch.randn(2, 3, 8, 8)
    otonas.export(otonas.build(otonas.analyze(model, (x,))), tmp_path, example_inputs=(x,))
    code = (tmp_path / "model.py").read_text()
    compile(code, "model.py", "exec")  # the syntax error showed here
    assert "# Scale," not in code
    loaded = otonas.load(tmp_path)
    y = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(y), model(y), rtol=1e-5, atol=1e-6)
