"""Mixtures of experts from HuggingFace as they come (default config: cache on, transformers'
own experts implementation), random weights: every layer's expert FFN channels are prunable,
experts stay with the reason said, the built network slices the 3-D expert parameters and
equals the zeroed model at any length, the exported model.py does too, and expert FLOPs are
counted per routed token."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from otonas._torchvision import prepare_torchvision

prepare_torchvision()  # transformers imports torchvision: the CPU-torch workaround must come first
transformers = pytest.importorskip("transformers")

import otonas  # noqa: E402
from otonas.ops.moe import EXPERT_PIN  # noqa: E402
from otonas.testing import zero_groups_  # noqa: E402

T = transformers
HIDDEN, LAYERS, EXPERTS, TOP_K, SEQ = 64, 2, 4, 2, 16
SMALL = dict(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2,
             vocab_size=256, max_position_embeddings=128, num_experts_per_tok=TOP_K)


def _mixtral(impl=None):
    model = T.MixtralForCausalLM(T.MixtralConfig(**SMALL, intermediate_size=128, num_local_experts=EXPERTS))
    if impl is not None:
        model.set_experts_implementation(impl)
    return model


def _qwen2_moe():
    return T.Qwen2MoeForCausalLM(T.Qwen2MoeConfig(**SMALL, intermediate_size=128, moe_intermediate_size=32,
                                                  shared_expert_intermediate_size=128, num_experts=EXPERTS))


# name: (model, the experts' intermediate size)
MODELS = {
    "mixtral": (_mixtral, 128),
    "qwen2-moe": (_qwen2_moe, 32),
    "mixtral-eager": (lambda: _mixtral("eager"), 128),  # captured with grouped_mm: eager loops on the data
    "mixtral-batched": (lambda: _mixtral("batched_mm"), 128),  # expert weights gathered per token, bmm
}


def _ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(seed))


def _space(name):
    make, _ = MODELS[name]
    torch.manual_seed(0)
    model = make().eval()
    assert model.config.use_cache  # as it comes: the cache is on
    return model, otonas.analyze(model, (_ids(2, SEQ),))


def _expert_channels(space, inter):
    return [f for f in space.families
            if any(layer.endswith("mlp.experts") for layer in f.layers) and len(f.groups) == f.num_channels == inter]


def _zeroed(name, fraction=0.3):
    model, space = _space(name)
    mask = np.random.default_rng(0).random(space.num_prunable_groups) < fraction
    zero_groups_(space, space.removable(mask))
    return model, space


def _logits(out):
    if isinstance(out, dict):
        return out["logits"]
    return out[0] if isinstance(out, (tuple, list)) else out.logits


@pytest.mark.parametrize("name", sorted(MODELS))
def test_expert_channels_of_every_layer_are_prunable(name):
    _, space = _space(name)
    inter = MODELS[name][1]
    assert len(_expert_channels(space, inter)) == LAYERS, space.summary()


@pytest.mark.parametrize("name", ["mixtral", "qwen2-moe"])
def test_whole_experts_stay_and_the_summary_says_why(name):
    _, space = _space(name)
    experts = [f for f in space.families if f.num_channels == EXPERTS and any("experts" in x for x in f.layers)]
    assert len(experts) == LAYERS and all(not f.groups for f in experts), space.summary()
    assert all(any(ev.reason == EXPERT_PIN for ev in f.pins) for f in experts)
    assert "experts are not removed whole" in space.summary()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_built_network_slices_the_experts_and_equals_the_zeroed_model_at_any_length(name):
    model, space = _zeroed(name)
    inter = MODELS[name][1]
    subnet = otonas.build(space)
    params = dict(subnet.named_parameters())
    for layer in range(LAYERS):
        gate_up = params[f"model.layers.{layer}.mlp.experts.gate_up_proj"]
        down = params[f"model.layers.{layer}.mlp.experts.down_proj"]
        kept = down.shape[2]
        assert kept < inter and gate_up.shape == (EXPERTS, 2 * kept, HIDDEN) and down.shape == (EXPERTS, HIDDEN, kept)
    with torch.no_grad():
        for batch, length in ((2, 16), (3, 5), (1, 23)):
            x = _ids(batch, length, seed=batch + length)
            want, got = model(x).logits, _logits(subnet(x))
            assert got.shape == want.shape
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))


@pytest.mark.parametrize("name", ["mixtral", "qwen2-moe"])
def test_exported_model_py_loads_and_matches(name, tmp_path):
    model, space = _zeroed(name)
    result = otonas.export(space, tmp_path, subnet=otonas.build(space))
    assert not any("readable forward did not reproduce" in g for g in result.gaps), result.gaps
    source = (tmp_path / "model.py").read_text()
    assert "import transformers" not in source  # the expert products are written with torch alone
    loaded = otonas.load(tmp_path)
    with torch.no_grad():
        for batch, length in ((3, 7), (1, 23)):
            x = _ids(batch, length, seed=9)
            want = model(x).logits
            torch.testing.assert_close(_logits(loaded(x)), want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))


@pytest.mark.parametrize("name", ["mixtral", "qwen2-moe"])
def test_expert_flops_are_counted_per_routed_token(name):
    _, space = _space(name)
    inter = MODELS[name][1]
    dense = space.costs()
    # zero only expert channels: each one costs gate + up + down, H MACs each, for every (token, chosen expert)
    fams = _expert_channels(space, inter)
    mask = np.zeros(space.num_prunable_groups, dtype=bool)
    per_layer = [f.groups[: inter // 4] for f in fams]
    for groups in per_layer:
        mask[list(groups)] = True
    removed = space.removable(mask)
    pruned = space.costs(removed)
    n_removed = sum(len(g) for g in per_layer)
    assert dense.flops - pruned.flops == n_removed * SEQ * TOP_K * 3 * HIDDEN
    assert dense.flops >= LAYERS * SEQ * TOP_K * 3 * HIDDEN * inter  # the dense experts, top-k of them per token
    assert pruned.params == dense.params - n_removed * EXPERTS * 3 * HIDDEN


def test_the_experts_implementation_is_restored_after_capture():
    model, space = _space("mixtral-eager")
    otonas.build(space)
    assert model.config._experts_implementation == "eager"


def test_moe_built_in_place_generates_the_zeroed_models_tokens():
    """In place the experts keep their stacked layout (``intermediate_dim`` follows); torch's
    grouped_mm wants widths that are multiples of 16 bytes, so whole blocks of 4 channels go."""
    import copy

    torch.manual_seed(0)
    model = _mixtral().eval()
    space = otonas.analyze(model, (torch.randint(0, 256, (2, 16)),))
    mask = np.zeros(space.num_prunable_groups, dtype=bool)
    for fam in space.families:
        if fam.groups:
            mask[list(fam.groups)[:len(fam.groups) * 3 // 10 // 4 * 4]] = True
    zero_groups_(space, space.removable(mask))
    zeroed = copy.deepcopy(model)
    otonas.build(space, inplace=True)
    experts = model.model.layers[0].mlp.experts
    assert experts.down_proj.shape[2] == experts.intermediate_dim < zeroed.model.layers[0].mlp.experts.intermediate_dim
    prompt = torch.randint(0, 256, (1, 5))
    with torch.no_grad():
        assert torch.equal(model.generate(prompt, max_new_tokens=8, do_sample=False),
                           zeroed.generate(prompt, max_new_tokens=8, do_sample=False))
