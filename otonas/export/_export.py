"""``export``: write the built network as ``model.py`` + ``model.safetensors`` + ``architecture.json``."""

from __future__ import annotations

import json
import os
import sys
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import fx, nn
from torch.utils import _pytree as pytree

from ..analysis import Plan, SearchSpace, analyze
from ..build import build
from ..capture import shorter_inputs
from ._arch import architecture as architecture_doc
from ._arch import node_flops, original_layers, record_shapes
from ._codegen import ExportError, Generated, ModelFacts, generate
from ..ops import module_stack, source_node
from ._load import LOADER, load

__all__ = ["ExportResult", "export"]

RTOL = 1e-4


@dataclass(frozen=True)
class ExportResult:
    """Where an export went and what it holds."""

    out_dir: Path
    model_py: Path
    weights: Path
    architecture_json: Path
    class_name: str
    parameters: int  # parameters in model.safetensors
    gaps: tuple[str, ...]  # ops written as torch.ops.aten calls, outputs simplified, ...
    max_rel_diff: float | None  # model.py against the subnet on the example inputs; None if not checked
    seconds: float


def _tensor_map(module: nn.Module, program: torch.export.ExportedProgram | None = None) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = dict(module.named_parameters(remove_duplicate=False))
    out.update(dict(module.named_buffers(remove_duplicate=False)))
    if program is not None:
        out.update({k: v for k, v in program.constants.items() if isinstance(v, torch.Tensor)})
    return out


def _crc(t: torch.Tensor) -> int:
    flat = t.detach().cpu().contiguous().reshape(-1)
    # an ndarray is a buffer; numpy's stubs do not say so
    return zlib.crc32(flat.view(torch.uint8).numpy()) if flat.numel() else 0  # type: ignore[arg-type]


def _write_weights(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    seen: dict[tuple[int, int | torch.SymInt], str] = {}
    ready: dict[str, torch.Tensor] = {}
    for k, t in tensors.items():
        t = t.detach().cpu().contiguous()
        key = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else (id(t), 0)
        if key in seen:  # a tensor tied to another: safetensors stores each storage once
            t = t.clone()
        seen[key] = k
        ready[k] = t
    meta = dict(metadata)
    meta["crc32"] = json.dumps({k: _crc(t) for k, t in ready.items()})
    save_file(ready, str(path), metadata=meta)


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _compare(ref: Any, out: Any) -> float:
    a, _ = pytree.tree_flatten(ref)
    b, _ = pytree.tree_flatten(out)
    if len(a) != len(b):
        return float("inf")
    worst = 0.0
    for x, y in zip(a, b):
        if not isinstance(x, torch.Tensor):
            continue
        if not isinstance(y, torch.Tensor) or x.shape != y.shape:
            return float("inf")
        if not x.is_floating_point():
            worst = max(worst, float((x != y).any()))
            continue
        if x.numel():
            diff = (x.double() - y.double()).abs().max().item()
            scale = x.double().abs().max().item()
            worst = max(worst, diff / scale if scale > 0 else diff)
    return worst


def _class_name(gm: fx.GraphModule, space: SearchSpace | None) -> tuple[str, str]:
    if space is not None:
        t = type(space.model)
        return t.__name__, f"{t.__module__}.{t.__qualname__}"
    for n in gm.graph.nodes:
        for path, typ in module_stack(n):
            if path == "":
                return typ.rsplit(".", 1)[-1], typ
    name = type(gm).__name__
    return (name[5:] if name.startswith("Built") and len(name) > 5 else name), ""


def _docstring(name: str, source_type: str, version: str, totals: dict[str, Any], weights_name: str,
               command: str | None) -> str:
    p, f = totals.get("params", {}), totals.get("flops", {})
    lines = [f"{name} after otonas {version} removed its zero channels: plain PyTorch, no otonas needed."]
    if p.get("before") is not None:
        lines.append("")
        lines.append(f"Parameters {p['before']:,} -> {p['after']:,}; FLOPs (MACs per sample) "
                     f"{f.get('before', 0):,} -> {f.get('after', 0):,}.")
    if command:
        lines += ["", f"Made by: {command}"]
    lines += ["", f"Layers keep the module paths of {source_type or 'the original network'}, so the names in",
              f"{weights_name} are the original ones. To use it (torch and safetensors only)::", "",
              "    import model", "    net = model.load()  # reads model.safetensors next to this file"]
    return "\n".join(lines)


def export(
    subnet_or_space: SearchSpace | fx.GraphModule | nn.Module,
    out_dir: str | os.PathLike[str],
    *,
    example_inputs: Sequence[Any] | torch.Tensor | None = None,
    architecture: Mapping[str, Any] | None = None,
    command: str | None = None,
    check: bool = True,
    plan: Plan | None = None,
    subnet: fx.GraphModule | None = None,
    model: nn.Module | None = None,
) -> ExportResult:
    """Write ``model.py``, ``model.safetensors`` and ``architecture.json`` to ``out_dir``.

    ``subnet_or_space`` is a :class:`SearchSpace` (built here with :func:`otonas.build`, which
    gives sizes, parameters and FLOPs before and after), a GraphModule returned by
    :func:`otonas.build`, or any ``nn.Module`` (analysed on ``example_inputs`` and written
    as it is). ``architecture`` adds entries to ``architecture.json`` (e.g. the options the
    network was built with); ``command`` records how (default: this process's command line).
    With ``check`` the written ``model.py`` is loaded back and run on the example inputs
    (``example_inputs`` or those the space was captured with) against the subnet. With a
    space, ``plan`` (:meth:`SearchSpace.plan`) is what was removed, read from the weights when it
    is not given, and ``subnet`` (what ``otonas.build(space, plan)`` returned) saves building it
    again; pass both when you have them, as ``otonas search`` does. ``model``: with a space, the
    weights of this network of the analysed architecture instead of the analysed model's (as in
    ``otonas.build(space, plan, model=...)``).
    """
    from .. import __version__

    t0 = time.perf_counter()
    space: SearchSpace | None = None
    if isinstance(subnet_or_space, SearchSpace):
        space = subnet_or_space
    elif isinstance(subnet_or_space, fx.GraphModule):
        gm = subnet_or_space
    elif isinstance(subnet_or_space, nn.Module):
        if example_inputs is None:
            raise ExportError(f"exporting a plain {type(subnet_or_space).__name__} needs example_inputs to capture it; "
                              "or pass the SearchSpace or the subnet from otonas.build")
        space = analyze(subnet_or_space, example_inputs)
    else:
        raise ExportError(f"export takes a SearchSpace, a GraphModule from otonas.build or an nn.Module, "
                          f"not {type(subnet_or_space).__name__}")
    erased_ops: list[dict[str, Any]] = []
    if space is not None:
        plan = plan if plan is not None else space.plan(model=model)
        if plan.erased is not None:
            graph_nodes = {n.name: n for n in space.capture.program.graph.nodes}
            erased_ops = [{"module": g.module, "join": g.join, "join_kind": g.join_kind,
                           "operators": [{"node": k, "op": str(graph_nodes[k].target)} for k in sorted(g.nodes)
                                         if k in graph_nodes and graph_nodes[k].op == "call_function"],
                           "params": list(g.params)} for g, e in zip(space.erasing_groups, plan.erased) if e]
        gm = subnet if subnet is not None else build(space, plan, model=model)
    elif subnet is not None or plan is not None or model is not None:
        raise ExportError("subnet=, plan= and model= go with a SearchSpace: "
                          "export(space, out_dir, plan=plan, subnet=otonas.build(space, plan))")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    inputs = tuple(example_inputs) if example_inputs is not None else (
        tuple(space.capture.example_inputs) if space is not None else None)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    class_name, source_type = _class_name(gm, space)
    program = space.capture.program if space is not None else None
    original = {n.name: n for n in program.graph.nodes} if program is not None else {}

    def original_node(node: fx.Node) -> fx.Node | None:
        return original.get(source_node(node) or "")

    def rank(node: fx.Node) -> int | None:
        src = original_node(node)
        val = src.meta.get("val") if src is not None else None
        val = node.meta.get("val") if val is None else val
        return val.dim() if isinstance(val, torch.Tensor) else None

    source = (model if model is not None else space.model) if space is not None else None  # whose weights
    modules = dict(source.named_modules()) if source is not None else {}
    own_params = {k: p.numel() for k, p in gm.named_parameters(remove_duplicate=False)}
    before_params = {k for k, _ in source.named_parameters(remove_duplicate=False)} if source is not None else set()

    # totals and per-layer costs
    totals: dict[str, Any] = {}
    if plan is not None:
        totals = {"params": {"before": plan.before.params, "after": plan.after.params},
                  "flops": {"before": plan.before.flops, "after": plan.after.flops}}
    reference, shapes = None, None
    if inputs is not None:
        if any(n.target is torch.ops.aten.sym_size.int for n in gm.graph.nodes):
            # the batch size is free: one sample is enough, and half the time on CPU
            inputs = tuple(x[:1] if isinstance(x, torch.Tensor) and x.dim() else x for x in inputs)
        reference, shapes = record_shapes(gm, inputs)
    other: tuple[Any, Any] | None = None  # inputs of another length and the subnet's outputs on them
    if check and inputs is not None and space is not None:
        shorter = shorter_inputs(inputs, space.capture.free_dims)
        if shorter is not None:
            with torch.no_grad():
                other = (shorter, gm(*shorter))
    batch = next((int(x.shape[0]) for x in inputs or () if isinstance(x, torch.Tensor) and x.dim()), 1)
    flops_after = node_flops(gm.graph, lambda n: shapes.get(n.name), batch) if shapes is not None else None
    flops_before = None
    if program is not None:
        from ._arch import _val_shape

        cap_batch = next((int(x.shape[0]) for x in space.capture.example_inputs  # type: ignore[union-attr]
                          if isinstance(x, torch.Tensor) and x.dim()), 1)
        flops_before = node_flops(program.graph, _val_shape, cap_batch)

    header = {"format": "otonas-architecture", "format_version": 1, "otonas_version": __version__,
              "model": source_type or class_name, "class_name": class_name,
              "command": command if command is not None else " ".join(sys.argv)}
    if architecture:
        header.update(dict(architecture))
    gaps_note: list[str] = []
    result: ExportResult | None = None
    for aten_fallback in (False, True):
        facts = ModelFacts(class_name=class_name, source_type=source_type,
                           docstring=_docstring(class_name, source_type, __version__, totals, "model.safetensors",
                                                command),
                           module=modules.get, rank=rank, original_node=original_node)
        gen = generate(gm, facts, loader=LOADER, aten_fallback=aten_fallback)
        tensors = _state(gen, gm, modules)
        before_tensors = _tensor_map(source, program) if source is not None else None
        before_layers = original_layers(program, before_tensors or {}) if program is not None else {}
        types = {p: t for n in gm.graph.nodes for p, t in module_stack(n)}
        arch = architecture_doc(gen, tensors, types=types, before_tensors=before_tensors, before_layers=before_layers,
                            flops_before=flops_before, flops_after=flops_after, totals=totals,
                            header={**header, "known_gaps": gaps_note}, params=set(own_params),
                            params_before=set(before_params), erased_ops=erased_ops)
        arch["params_in_file"] = int(sum(own_params.values()))
        arch_text = json.dumps(arch, indent=1, default=str)
        _replace(out / "model.py", gen.source)
        _replace(out / "architecture.json", arch_text + "\n")
        weights = out / "model.safetensors"
        tmp = weights.with_name("model.safetensors.tmp")
        _write_weights(tmp, tensors, {"format": "pt", "otonas_version": __version__,
                                      "architecture": json.dumps(arch, separators=(",", ":"), default=str)})
        os.replace(tmp, weights)
        diff = None
        if check and inputs is not None:
            diff, why = _check(out, reference, inputs)
            if other is not None and diff <= RTOL:
                diff, why = _check(out, other[1], other[0])
                why += " at another sequence length than the example's"
            if diff > RTOL and not aten_fallback:
                gaps_note.append(f"the readable forward did not reproduce the subnet ({why}); "
                                 "written with torch.ops.aten calls instead")
                continue
            if diff > RTOL:
                raise ExportError(f"model.py written to {out} does not reproduce the subnet ({why}). "
                                  "This is a bug in otonas' exporter; please report it with the model")
        result = ExportResult(out, out / "model.py", weights, out / "architecture.json", class_name,
                              arch["params_in_file"], tuple(gen.gaps) + tuple(gaps_note), diff,
                              time.perf_counter() - t0)
        break
    assert result is not None
    return result


def _state(gen: Generated, gm: fx.GraphModule, modules: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """The tensors of model.py's state_dict, by name: the subnet's, plus what nn layers add
    (``num_batches_tracked``: the original module's count, else zero)."""
    own: dict[str, torch.Tensor] = dict(gm.named_parameters(remove_duplicate=False))
    own.update(dict(gm.named_buffers(remove_duplicate=False)))
    out: dict[str, torch.Tensor] = {}
    for key in gen.state:
        if key in own:
            out[key] = own[key].detach()
            continue
        path, name = key.rsplit(".", 1)
        if name != "num_batches_tracked":
            raise ExportError(f"internal: model.py declares tensor '{key}', which the subnet does not have")
        orig = getattr(modules.get(path), "num_batches_tracked", None)
        out[key] = orig.detach().clone() if isinstance(orig, torch.Tensor) else torch.tensor(0, dtype=torch.long)
    return out


def _check(out: Path, reference: Any, inputs: tuple[Any, ...]) -> tuple[float, str]:
    """Largest relative difference of the written model.py against the subnet, and what failed."""
    device = next((x.device for x in inputs if isinstance(x, torch.Tensor)), torch.device("cpu"))
    try:
        model = load(out, device=str(device))
        with torch.no_grad():
            got = model(*inputs)
    except Exception as e:  # the generated code failed to run: a bug of the exporter
        return float("inf"), f"{type(e).__name__}: {e}"
    diff = _compare(reference, got)
    return diff, f"max relative difference {diff:.3g} > {RTOL}"


