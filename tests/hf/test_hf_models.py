"""HuggingFace models as they come (default config: key/value cache on, ModelOutput), random
weights: analysis finds heads and MLP channels, the built network equals the zeroed model at
the capture shape and at other sequence lengths and batch sizes, and the exported model.py
does too, in a fresh process."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from otonas._torchvision import prepare_torchvision

prepare_torchvision()  # transformers imports torchvision: the CPU-torch workaround must come first
transformers = pytest.importorskip("transformers")

import otonas  # noqa: E402
from otonas.testing import zero_groups_  # noqa: E402

T = transformers
SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=256,
             max_position_embeddings=128)


def _ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(seed))


def _decoder_only(cls, config):
    return lambda: cls(config), lambda b, n, seed=0: (_ids(b, n, seed),)


def _encoder_decoder(cls, config):
    return lambda: cls(config), lambda b, n, seed=0: (_ids(b, n, seed), None, _ids(b, n, seed + 1))


def _images(cls, config):
    return lambda: cls(config), lambda b, n, seed=0: (torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(seed)),)


def _clip():
    config = T.CLIPConfig(text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                           num_attention_heads=4, vocab_size=256, max_position_embeddings=64),
                          vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                             num_attention_heads=4, image_size=32, patch_size=8), projection_dim=32)
    return lambda: T.CLIPModel(config), lambda b, n, seed=0: (
        _ids(b, n, seed), torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(seed)))


def _lora():
    def make():
        peft = pytest.importorskip("peft")
        base = T.LlamaForCausalLM(T.LlamaConfig(**SMALL, num_key_value_heads=2))
        model = peft.get_peft_model(base, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj", "up_proj"]))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:  # zero at init: give the adapters a say
                    p.normal_(0.0, 0.02)
        return model

    return make, lambda b, n, seed=0: (_ids(b, n, seed),)


MODELS = {
    "llama-mha": _decoder_only(T.LlamaForCausalLM, T.LlamaConfig(**SMALL, num_key_value_heads=4)),
    "llama-gqa": _decoder_only(T.LlamaForCausalLM, T.LlamaConfig(**SMALL, num_key_value_heads=2)),
    "llama-mqa": _decoder_only(T.LlamaForCausalLM, T.LlamaConfig(**SMALL, num_key_value_heads=1)),
    "qwen2-gqa": _decoder_only(T.Qwen2ForCausalLM, T.Qwen2Config(**SMALL, num_key_value_heads=2)),
    "gpt2": _decoder_only(T.GPT2LMHeadModel, T.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=256,
                                                          n_positions=128, bos_token_id=0, eos_token_id=0)),
    "falcon-mqa": _decoder_only(T.FalconForCausalLM, T.FalconConfig(hidden_size=64, num_hidden_layers=2,
                                                                    num_attention_heads=4, vocab_size=256,
                                                                    multi_query=True)),
    "bert": _decoder_only(T.BertModel, T.BertConfig(**SMALL)),
    "t5": _encoder_decoder(T.T5Model, T.T5Config(d_model=64, d_ff=128, num_layers=2, num_heads=4, d_kv=16,
                                                 vocab_size=256)),
    "bart": _encoder_decoder(T.BartModel, T.BartConfig(d_model=64, encoder_ffn_dim=128, decoder_ffn_dim=128,
                                                       encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                                                       decoder_attention_heads=4, vocab_size=256,
                                                       max_position_embeddings=128)),
    "vit": _images(T.ViTForImageClassification, T.ViTConfig(hidden_size=64, intermediate_size=128,
                                                             num_hidden_layers=2, num_attention_heads=4,
                                                             image_size=32, patch_size=8, num_labels=10)),
    "clip": _clip(),
    "llama-lora": _lora(),
}
# what a search must find: per model, the size of its families of attention heads and of MLP channels
EXPECTED = {"llama-mha": (4, 128), "llama-gqa": (2, 128), "llama-mqa": (4, 128), "qwen2-gqa": (2, 128),
            "gpt2": (4, 256), "bert": (4, 128), "t5": (4, 128), "bart": (4, 128), "vit": (4, 128), "clip": (4, 128),
            "llama-lora": (2, 128)}


def _main(out):
    for key in ("logits", "last_hidden_state", "logits_per_image"):
        if isinstance(out, dict) and out.get(key) is not None:
            return out[key]
        if getattr(out, key, None) is not None:
            return getattr(out, key)
    return out[0] if isinstance(out, (tuple, list)) else out


def _zeroed(name):
    make, inputs = MODELS[name]
    torch.manual_seed(0)
    model = make().eval()
    assert getattr(model.config, "use_cache", True)  # as it comes: the cache is on where there is one
    space = otonas.analyze(model, inputs(2, 16))
    mask = np.random.default_rng(0).random(space.num_prunable_groups) < 0.3
    zero_groups_(space, space.removable(mask))
    return model, space, inputs


@pytest.mark.parametrize("name", sorted(MODELS))
def test_built_network_equals_the_zeroed_model_at_any_length(name):
    model, space, inputs = _zeroed(name)
    x = inputs(2, 16)
    token = [i for i, t in enumerate(t for t in x if isinstance(t, torch.Tensor)) if not t.is_floating_point()]
    free = space.capture.free_dims
    assert all(0 in dims for dims in free) and all(1 in free[i] for i in token), free  # batch, and sequence of ids
    subnet = otonas.build(space)
    assert sum(p.numel() for p in subnet.parameters()) < 0.9 * sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        for batch, length in ((2, 16), (3, 5), (1, 23)):
            x = inputs(batch, length, seed=batch + length)
            want, got = _main(model(*x)), _main(subnet(*x))
            assert got.shape == want.shape
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_heads_and_mlp_channels_of_every_layer_are_prunable(name):
    model, space, _ = _zeroed(name)
    n_heads, n_mlp = EXPECTED[name]
    heads = [f for f in space.families if len(f.groups) == f.num_channels == n_heads]
    mlp = [f for f in space.families if len(f.groups) == f.num_channels == n_mlp]
    layers = 4 if name in ("t5", "bart", "clip") else 2
    assert len(mlp) == layers, space.summary()
    # T5 shares its relative-position bias across the blocks of a stack: one head family per stack and kind
    assert len(heads) >= (3 if name == "t5" else 6 if name == "bart" else layers), space.summary()


def test_grouped_query_attention_removes_a_kv_head_with_its_query_heads():
    model, space, inputs = _zeroed("llama-gqa")
    fam = next(f for f in space.families if f.groups and f.num_channels == 2)
    assert any("k_proj" in layer for layer in fam.layers) and any("q_proj" in layer for layer in fam.layers)
    keep = np.zeros(space.num_prunable_groups, dtype=bool)
    keep[fam.groups[0]] = True  # remove KV head 0 of that layer, and with it query heads 0 and 1
    model.eval()
    space = otonas.analyze(model, inputs(2, 16))
    zero_groups_(space, keep)
    subnet = otonas.build(space)
    kv = dict(subnet.named_parameters())
    k_proj = next(k for k in kv if "k_proj" in k and "layers" in k and fam.layers[0].split(".")[2] in k)
    q_proj = k_proj.replace("k_proj", "q_proj")
    assert kv[k_proj].shape[0] == 16 and kv[q_proj].shape[0] == 32  # 1 of 2 KV heads, 2 of 4 query heads
    x = inputs(3, 9, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(_main(subnet(*x)), _main(model(*x)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["llama-gqa", "t5"])
def test_exported_model_py_reproduces_at_another_length_in_a_fresh_process(name, tmp_path):
    model, space, inputs = _zeroed(name)
    subnet = otonas.build(space)
    otonas.export(space, tmp_path, subnet=subnet)
    x = inputs(3, 7, seed=9)
    torch.save({"x": x, "want": _main(model(*x)).detach()}, tmp_path / "io.pt")
    code = textwrap.dedent(f"""
        import torch
        from model import load
        io = torch.load({str(tmp_path / 'io.pt')!r})
        out = load()(*io["x"])
        out = out.get("logits", out.get("last_hidden_state")) if isinstance(out, dict) else out
        out = out[0] if isinstance(out, (tuple, list)) else out
        torch.testing.assert_close(out, io["want"], rtol=1e-4, atol=1e-5)
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-2000:]


def test_the_cache_setting_is_restored_after_capture():
    model, space, _ = _zeroed("t5")
    otonas.build(space)
    assert model.config.use_cache and model.decoder.config.use_cache


def test_verify_checks_a_token_model_at_another_length():
    torch.manual_seed(0)
    model = T.LlamaForCausalLM(T.LlamaConfig(**SMALL, num_key_value_heads=2))
    report = otonas.verify(model, input_shapes=[(2, 16)], input_dtypes=[torch.long])
    assert report.passed, report.message
    assert [3, 12] in report.checked_shapes and [3, 16] in report.checked_shapes, report.checked_shapes


@pytest.mark.parametrize("name", ["llama-gqa", "llama-mqa"])
def test_a_model_built_in_place_still_generates_the_zeroed_models_tokens(name):
    import copy

    model, space, inputs = _zeroed(name)
    zeroed = copy.deepcopy(model)
    built = otonas.build(space, inplace=True)
    assert type(built) is type(zeroed)
    assert sum(p.numel() for p in built.parameters()) < 0.9 * sum(p.numel() for p in zeroed.parameters())
    layer = built.model.layers[0].self_attn
    assert layer.k_proj.out_features % layer.head_dim == 0
    prompt = inputs(2, 6, seed=3)[0]
    with torch.no_grad():
        want = zeroed.generate(prompt, max_new_tokens=8, do_sample=False)
        got = built.generate(prompt, max_new_tokens=8, do_sample=False)
    assert torch.equal(got, want)


@pytest.mark.parametrize("name", sorted(set(MODELS) - {"llama-gqa", "t5"}))
def test_exported_model_py_reproduces_the_subnet_at_another_length(name, tmp_path):
    """export's own check loads model.py back and compares it with the subnet at the example's
    shape and at a shorter sequence (where one is free); a mismatch raises."""
    model, space, inputs = _zeroed(name)
    subnet = otonas.build(space)
    result = otonas.export(space, tmp_path, subnet=subnet)
    assert result.max_rel_diff is not None and result.max_rel_diff <= 1e-4
    loaded = otonas.load(tmp_path)
    x = inputs(3, 7, seed=4)
    with torch.no_grad():
        torch.testing.assert_close(_main(loaded(*x)), _main(subnet(*x)), rtol=1e-4, atol=1e-5)
