"""Models whose forward takes a list, a dict or a tuple: the built subnet takes the same
arguments, by the forward's own names, and computes what the zeroed original does."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import otonas
from otonas.testing import zero_groups_


class Nested(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 4, 1)

    def forward(self, xs: list[torch.Tensor], cfg: dict[str, torch.Tensor],
                pair: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        h = self.a(xs[0]) + self.a(xs[1])
        return {"out": self.b(h) * cfg["w"] + pair[0], "aux": pair[1] * 2}


def _args(batch: int, seed: int) -> tuple:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return ([r(batch, 3, 8, 8), r(batch, 3, 8, 8)], {"w": r(1)}, (r(1), r(batch, 2)))


def test_list_dict_tuple_arguments_build_and_call(tmp_path):
    torch.manual_seed(0)
    model = Nested().eval()
    space = otonas.analyze(model, _args(2, 0))
    mask = np.zeros(space.num_prunable_groups, dtype=bool)
    mask[:3] = True
    mask = space.removable(mask)
    zero_groups_(space, mask)
    subnet = otonas.build(space)
    assert dict(subnet.named_parameters())["b.weight"].shape[1] == 8 - int(mask.sum())
    for batch in (1, 3):
        args = _args(batch, batch)
        with torch.no_grad():
            ref, out = model(*args), subnet(*args)
            by_name = subnet(xs=args[0], cfg=args[1], pair=args[2])
        assert set(out) == {"out", "aux"}
        for k in ref:
            torch.testing.assert_close(out[k], ref[k], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(by_name[k], ref[k], rtol=1e-4, atol=1e-5)
    otonas.export(subnet, tmp_path, example_inputs=_args(3, 1))
    loaded = otonas.load(tmp_path)
    args = _args(2, 7)
    with torch.no_grad():
        ref, out = model(*args), loaded(*args)
    for k in ref:
        torch.testing.assert_close(out[k], ref[k], rtol=1e-4, atol=1e-5)
