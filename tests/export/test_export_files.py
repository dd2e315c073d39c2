"""What an export writes, and what loading it does with damaged or mismatched files."""

from __future__ import annotations

import ast
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

import otonas
from export_helpers import random_zero
from otonas.export import ExportError, export, load
from tiny_models import ConvChain, inputs

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def conv_chain(tmp_path_factory):
    """ConvChain with 30% of its groups zero, exported; (space, subnet, export dir)."""
    torch.manual_seed(0)
    model = ConvChain().eval()
    space = otonas.analyze(model, inputs([(2, 3, 8, 8)], torch.float32))
    random_zero(space, 0.3)
    out = tmp_path_factory.mktemp("conv_chain")
    export(space, out, command="otonas verify tiny_models:ConvChain --export out",
           architecture={"options": {"fraction": 0.3}})
    return space, otonas.build(space), out


@pytest.fixture()
def copy(conv_chain, tmp_path):
    """A copy of the export to damage."""
    dst = tmp_path / "export"
    shutil.copytree(conv_chain[2], dst)
    return dst


def _import_model_py(directory: Path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"m_{abs(hash(str(directory)))}", directory / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _both_loaders_fail(directory: Path, *needles: str) -> None:
    """model.py's own load and otonas.export.load both refuse, naming what is wrong."""
    with pytest.raises(ValueError) as own:
        _import_model_py(directory).load()
    with pytest.raises(ExportError) as ours:
        load(directory)
    for needle in needles:
        assert needle in str(own.value), str(own.value)
        assert needle in str(ours.value), str(ours.value)


def _rewrite_header(path: Path, change) -> None:
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    change(header)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + n:])


# --- what is written ----------------------------------------------------------------------------
def test_files_and_metadata(conv_chain):
    space, subnet, out = conv_chain
    assert {p.name for p in out.iterdir()} >= {"model.py", "model.safetensors", "architecture.json"}
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
    assert meta["otonas_version"] == otonas.__version__
    arch = json.loads(meta["architecture"])
    assert arch == json.loads((out / "architecture.json").read_text())
    assert set(json.loads(meta["crc32"])) == keys
    # the weights are the subnet's, under the original names, plus BatchNorm's batch counters
    own = dict(subnet.state_dict())
    assert keys == set(own) | {"b1.num_batches_tracked", "b2.num_batches_tracked"}
    weights = load_file(str(out / "model.safetensors"))
    for k, t in own.items():
        assert torch.equal(weights[k], t), k


def test_architecture_json(conv_chain):
    space, subnet, out = conv_chain
    arch = json.loads((out / "architecture.json").read_text())
    assert arch["otonas_version"] == otonas.__version__
    assert arch["command"] == "otonas verify tiny_models:ConvChain --export out"
    assert arch["options"] == {"fraction": 0.3}
    removed = space.removable(space.zero_groups())
    assert arch["params"] == {"before": space.costs().params, "after": space.costs(removed).params}
    assert arch["flops"] == {"before": space.costs().flops, "after": space.costs(removed).flops}
    layers = {e["name"]: e for e in arch["layers"]}
    assert list(layers) == ["c1", "b1", "c2", "b2", "fc"]
    c1 = layers["c1"]
    assert c1["type"] == "Conv2d" and c1["source_type"] == "torch.nn.modules.conv.Conv2d"
    assert c1["channels"]["out"]["before"] == 8
    assert c1["channels"]["out"]["after"] == subnet.c1.weight.shape[0] < 8
    assert c1["params"]["after"] == subnet.c1.weight.numel() + subnet.c1.bias.numel()
    assert c1["flops"]["before"] > c1["flops"]["after"] > 0
    assert sum(e["flops"]["after"] for e in arch["layers"]) == arch["flops"]["after"]
    assert layers["b1"]["channels"]["features"] == {"before": 8, "after": subnet.c1.weight.shape[0]}
    assert all(e["erased_operators"] == [] for e in arch["layers"]) and arch["erased_operators"] == []


def test_model_py_is_plain_pytorch(conv_chain):
    src = (conv_chain[2] / "model.py").read_text()
    tree = ast.parse(src)
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported <= {"torch", "safetensors", "json", "math", "mmap", "os", "zlib"}
    assert "torch.ops" not in src
    assert "nn.Conv2d(3, " in src and "nn.BatchNorm2d(" in src and "nn.Linear(" in src


@pytest.mark.parametrize("where", ["model_py", "loader"])
def test_no_pickle_on_the_load_path(conv_chain, where):
    path = conv_chain[2] / "model.py" if where == "model_py" else ROOT / "otonas" / "export" / "_load.py"
    text = path.read_text()
    assert not re.search(r"pickle|torch\.load\b|weights_only", text), path


def test_any_batch_size_and_file_path(conv_chain):
    space, subnet, out = conv_chain
    model = load(out / "model.safetensors")
    for batch in (1, 5):
        x = inputs([(2, 3, 8, 8)], torch.float32, batch=batch, seed=batch)
        with torch.no_grad():
            torch.testing.assert_close(model.eval()(*x), subnet(*x), rtol=1e-4, atol=1e-6)


# --- damaged or mismatched files ---------------------------------------------------------------
def test_truncated_file(copy):
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])
    _both_loaders_fail(copy, "truncated", "tensor '")


def test_header_cut_off(copy):
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    _both_loaders_fail(copy, "truncated")


def test_flipped_byte_names_the_tensor(copy):
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    start, _ = header["fc.weight"]["data_offsets"]
    data[8 + n + start] ^= 0xFF
    weights.write_bytes(bytes(data))
    _both_loaders_fail(copy, "'fc.weight'", "checksum")


def test_tampered_shape_names_the_tensor(copy):
    def swap(header):
        shape = header["c1.weight"]["shape"]
        header["c1.weight"]["shape"] = [shape[1], shape[0], *shape[2:]]

    _rewrite_header(copy / "model.safetensors", swap)
    _both_loaders_fail(copy, "'c1.weight'", "model.py expects")


def test_tampered_size_names_the_tensor(copy):
    def grow(header):
        header["c2.weight"]["shape"][0] += 1

    _rewrite_header(copy / "model.safetensors", grow)
    _both_loaders_fail(copy, "'c2.weight'", "bytes")


def test_missing_and_unexpected_tensors(copy):
    weights = copy / "model.safetensors"
    with safe_open(str(weights), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(weights))
    del tensors["fc.bias"]
    tensors["extra.weight"] = torch.zeros(2)
    save_file(tensors, str(weights), metadata={k: v for k, v in meta.items() if k != "crc32"})
    _both_loaders_fail(copy, "missing tensor 'fc.bias'", "unexpected tensor 'extra.weight'")


def test_weights_that_do_not_fit_model_py(copy):
    src = (copy / "model.py").read_text()
    declared = re.search(r"nn\.Linear\((\d+), (\d+)\)", src)
    assert declared
    (copy / "model.py").write_text(src.replace(declared.group(0), f"nn.Linear({declared.group(1)}, 7)"))
    _both_loaders_fail(copy, "'fc.weight'", "'fc.bias'")


def test_missing_files(tmp_path):
    with pytest.raises(ExportError, match="no model.py"):
        load(tmp_path)


# --- other inputs ---------------------------------------------------------------------------------
def test_export_a_built_graph_module(conv_chain, tmp_path):
    space, subnet, _ = conv_chain
    x = inputs([(2, 3, 8, 8)], torch.float32)
    result = export(subnet, tmp_path, example_inputs=x)
    assert result.max_rel_diff == 0.0 and result.class_name == "ConvChain"
    arch = json.loads((tmp_path / "architecture.json").read_text())
    c1 = next(e for e in arch["layers"] if e["name"] == "c1")
    assert c1["channels"]["out"] == {"before": None, "after": subnet.c1.weight.shape[0]}
    with torch.no_grad():
        torch.testing.assert_close(load(tmp_path)(*x), subnet(*x))


def test_export_a_plain_module(tmp_path):
    torch.manual_seed(0)
    model = ConvChain().eval()
    x = inputs([(2, 3, 8, 8)], torch.float32)
    result = export(model, tmp_path, example_inputs=x)
    assert result.max_rel_diff == 0.0
    with torch.no_grad():
        torch.testing.assert_close(load(tmp_path)(*x), model(*x))
    with pytest.raises(ExportError, match="example_inputs"):
        export(model, tmp_path)


def test_resnet18_model_py_reads_like_hand_written_code(tmp_path):
    from otonas._torchvision import import_torchvision

    torch.manual_seed(0)
    model = import_torchvision().models.resnet18().eval()
    space = otonas.analyze(model, (torch.randn(2, 3, 64, 64),))
    random_zero(space, 0.3)
    result = export(space, tmp_path)
    src = (tmp_path / "model.py").read_text()
    assert len(src.splitlines()) < 200
    assert result.gaps == () and "torch.ops" not in src
    assert "self.layer1 = nn.ModuleList([" in src and "# layer1.0 (BasicBlock)" in src
    assert "x = F.relu(out + x)" in src and "identity = " in src
    assert max(len(line) for line in src.splitlines()) <= 110
    # the checked-in example is such a file
    example = (ROOT / "docs" / "examples" / "resnet18_model.py").read_text()
    assert len(example.splitlines()) < 200 and "class ResNet(nn.Module):" in example
    ast.parse(example)


class TwoInTwoOut(nn.Module):
    """Two inputs, nested outputs, a raw parameter and an op without a public torch function."""

    def __init__(self) -> None:
        super().__init__()
        self.fa, self.fb = nn.Conv2d(3, 6, 3, padding=1), nn.Linear(4, 5)
        self.scale = nn.Parameter(torch.rand(6, 1, 1) + 0.5)

    def forward(self, x, y):
        a = F.relu(self.fa(x)) * self.scale
        a = torch.ops.aten.upsample_nearest2d.default(a, [16, 16], 2.0, 2.0)
        return {"a": a.flatten(1), "b": (self.fb(y), y.sum(-1))}


def test_nested_inputs_outputs_and_known_gaps(tmp_path):
    torch.manual_seed(0)
    model = TwoInTwoOut().eval()
    xs = (torch.randn(2, 3, 8, 8), torch.randn(2, 7, 4))
    space = otonas.analyze(model, xs)
    random_zero(space, 0.5)
    result = export(space, tmp_path)
    assert result.max_rel_diff == 0.0
    src = (tmp_path / "model.py").read_text()
    assert "def forward(self, x, y):" in src and "self.scale = nn.Parameter(torch.zeros(" in src
    assert any("upsample_nearest2d" in g for g in result.gaps)
    assert "# Known gaps" in src
    arch = json.loads((tmp_path / "architecture.json").read_text())
    assert arch["known_gaps"] == list(result.gaps)
    exported = load(tmp_path)
    x3 = (torch.randn(3, 3, 8, 8), torch.randn(3, 7, 4))
    with torch.no_grad():
        got, want = exported(*x3), model(*x3)
    assert set(got) == {"a", "b"} and isinstance(got["b"], tuple)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_erased_operators_are_listed(tmp_path):
    import search_spaces

    torch.manual_seed(0)
    model = search_spaces.create("demosupnet", size="tiny").eval()
    info = search_spaces.info("demosupnet")
    x = (torch.randn(2, *info.tiny_input_shape),)
    space = otonas.analyze(model, x)
    group = space.erasing_groups[0]
    params = dict(model.named_parameters())
    with torch.no_grad():
        for fqn in group.params:
            params[fqn].zero_()
    result = export(space, tmp_path)
    assert result.max_rel_diff == 0.0
    arch = json.loads((tmp_path / "architecture.json").read_text())
    assert [op["module"] for op in arch["erased_operators"]] == [group.module]
    gone = [e for e in arch["layers"] if e.get("erased")]
    assert gone and all(e["params"]["after"] == 0 and e["erased_operators"] for e in gone)
    assert not any(k.startswith(group.module + ".") for k in load_file(str(tmp_path / "model.safetensors")))
    assert arch["params"]["after"] < arch["params"]["before"]
