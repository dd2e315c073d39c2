"""Structural checks of the channel-flow analysis: which channels couple, which are pinned and why."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import otonas
from otonas import ops
from tiny_models import Attention, Bmm, Concat, ConvChain, GroupedDepthwise, Residual, SharedAndMisc, SqueezeExcite, inputs


def _space(model, shapes=((2, 3, 8, 8),), dtype=torch.float32):
    return otonas.analyze(model.eval(), inputs(list(shapes), dtype))


def _family(space, layer):
    return next(f for f in space.families if layer in f.layers)


def test_conv_chain_groups_cover_producer_and_consumer():
    space = _space(ConvChain())
    assert space.num_prunable_groups == 8 + 12
    layout = space.group_layout()
    # c1's output channels: c1 rows, c1 bias, b1 weight/bias and c2's input columns
    assert {d for d, _ in layout["c1.weight"]} == {0}
    assert {d for d, _ in layout["c2.weight"]} == {0, 1}
    assert torch.equal(layout["c1.weight"][0][1], layout["b1.weight"][0][1])
    assert torch.equal(layout["c1.weight"][0][1], dict(layout["c2.weight"])[1])
    assert _family(space, "fc").pins[0].reason == "model output"
    assert not _family(space, "fc").prunable


def test_residual_stream_is_one_family():
    space = _space(Residual())
    assert set(_family(space, "stem").layers) == {"stem", "a2"}
    assert set(_family(space, "down").layers) == {"down", "b2"}
    assert len(_family(space, "a1").groups) == 6


def test_concat_offsets_and_split():
    space = _space(Concat())
    layout = space.group_layout()
    cols = dict(layout["c.weight"])[1]
    a_rows = layout["a.weight"][0][1]
    b_rows = layout["b.weight"][0][1]
    # y = cat[a(5), b(7)] split [4, 8] then re-concatenated as [y2, y1]: cols = [a4, b0..b6, a0..a3]
    assert torch.equal(cols, torch.cat([a_rows[4:], b_rows, a_rows[:4]]))


def test_grouped_and_depthwise_conv_couple_whole_groups():
    space = _space(GroupedDepthwise())
    fam = _family(space, "pw")
    assert set(fam.layers) == {"pw", "grouped", "dw"}
    assert len(fam.groups) == 4  # conv groups=4: one group is a removable unit
    dw = dict(space.group_layout()["dw.weight"])[0]
    assert dw.tolist() == [g for g in range(4) for _ in range(8)]


def test_squeeze_excite_gate_joins_the_gated_channels():
    space = _space(SqueezeExcite())
    assert set(_family(space, "conv").layers) == {"conv", "fc2"}
    assert len(_family(space, "fc1").groups) == 4


def test_attention_heads_are_groups_and_layer_norm_pins_the_stream():
    space = _space(Attention(16, 4), shapes=((2, 7),), dtype=torch.int64)
    layout = space.group_layout()
    rows = layout["mha.in_proj_weight"][0][1]
    assert rows.unique().numel() == 4  # four heads
    head = rows[:16].view(4, 4)
    assert (head == head[:, :1]).all()  # each head's 4 rows move together
    assert torch.equal(rows[:16], rows[16:32]) and torch.equal(rows[:16], rows[32:])  # q, k, v rows of a head
    stream = _family(space, "embed")
    assert not stream.prunable and "layer_norm" in stream.pins[0].reason


def test_activation_products_need_a_zero_operand():
    space = _space(Bmm(), shapes=((2, 5, 6),))
    assert _family(space, "a").prunable  # a(x) is exactly zero when its group is: bmm is safe
    c = _family(space, "c")
    assert not c.prunable and "einsum" in c.pins[0].reason  # sigmoid(0) = 0.5: not safe


def test_shared_parameter_couples_its_uses():
    space = _space(SharedAndMisc())
    assert set(_family(space, "c1").layers) == {"c1", "shared"}


class Unknown(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)
        self.c = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        x = self.a(x)
        y = torch.fft.fft2(x).real  # no channel rule for the FFT
        return self.b(self.c(x) + y).mean((2, 3))


def test_unknown_op_pins_never_crashes():
    space = _space(Unknown())
    fam = _family(space, "a")
    assert not fam.prunable
    assert any("no channel rule" in p.reason for p in fam.pins)


class _Rolled(nn.Module):
    """Channels rolled along dim 1 (with dims), or the whole flattened tensor (without)."""

    def __init__(self, dims: bool) -> None:
        super().__init__()
        self.a, self.b, self.dims = nn.Conv2d(3, 6, 1), nn.Conv2d(6, 4, 1), dims

    def forward(self, x):
        y = self.a(x)
        return self.b(torch.roll(y, 1, 1) if self.dims else torch.roll(y, 1))


@pytest.mark.parametrize("dims", [True, False])
def test_roll_reorders_channels_with_or_without_dims(dims):
    space = _space(_Rolled(dims))
    fam = _family(space, "a")
    assert not fam.prunable and any("reordered by aten.roll" in p.reason for p in fam.pins)


def test_meta_device_analysis_needs_no_weights():
    with torch.device("meta"):
        model = Residual()
    x = torch.randn(2, 3, 8, 8, device="meta")
    space = otonas.analyze(model, (x,))
    assert space.num_prunable_groups == 46
    assert space.costs().params == sum(p.numel() for p in model.parameters())


def test_flops_of_a_known_network():
    space = _space(ConvChain())
    c = space.costs()
    assert c.flops == 8 * 64 * 27 + 12 * 64 * 72 + 5 * 12
    assert c.params == sum(p.numel() for p in ConvChain().parameters())


def test_analysis_does_not_change_the_model():
    model = ConvChain().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    otonas.analyze(model, inputs([(2, 3, 8, 8)], torch.float32))
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_rule_registry_warns_on_overwrite():
    linear = ops.lookup("aten.linear.default")
    assert type(linear).__name__ == "Linear"
    assert ops.lookup(torch.ops.aten.linear.default) is linear  # a target and its name find one rule
    with pytest.warns(UserWarning, match="overwritten"):
        ops.register("aten.linear")(type(linear))
    assert type(ops.lookup("aten.linear")) is type(linear)


class NotExportable(nn.Module):
    def forward(self, x):
        if x.sum().item() > 0:  # data-dependent control flow
            return x * 2
        return x


def test_capture_error_names_the_problem():
    with pytest.raises(otonas.CaptureError, match="torch.export could not capture NotExportable"):
        otonas.analyze(NotExportable(), (torch.randn(2, 3),))
