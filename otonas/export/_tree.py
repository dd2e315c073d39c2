"""The module tree of the generated network: which nodes are ``torch.nn`` layers, the
containers that keep the original module paths, and the ``__init__`` that declares them."""

from __future__ import annotations

import re

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from ..ops import LayerCall, LayerSpec, is_identifier, rule_for, run_layer, torch_module_class
from ._graph import ExportError, PLAIN, arg_values, fetch, supported
from ..ops import module_stack
from ._passes import copy_graph, drop_identities, out_of_place

__all__ = ["ModelFacts", "ModuleTree", "LINE"]

LINE = 100  # the longest line the generated code aims for


@dataclass(frozen=True)
class ModelFacts:
    """What the generator may know about the network beyond the graph itself."""

    class_name: str = "Network"
    source_type: str = ""  # e.g. "torchvision.models.resnet.ResNet"
    docstring: str = ""
    module: Callable[[str], nn.Module | None] = lambda path: None  # original module at a path
    rank: Callable[[fx.Node], int | None] = lambda node: None  # rank of a node's output, where known
    original_node: Callable[[fx.Node], fx.Node | None] = lambda node: None


@dataclass
class _Mod:
    name: str
    path: str
    kind: str = "dict"  # root | list | dict | layer
    children: dict[str, _Mod] = field(default_factory=dict)
    tensors: dict[str, str] = field(default_factory=dict)  # name -> fqn (declared directly)
    spec: LayerSpec | None = None
    type: str | None = None
    first: int = 1 << 30  # first use in the graph, for ordering


def _clashes(kind: str) -> set[str]:
    base = {"root": nn.Module, "list": nn.ModuleList, "dict": nn.ModuleDict}.get(kind, nn.Module)
    return set(dir(base)) | {"training", "forward"}


class ModuleTree:
    """The graph to write (cleaned up), its layers and the module tree they hang in."""

    def __init__(self, gm: fx.GraphModule, facts: ModelFacts, *, aten_fallback: bool) -> None:
        self.gm = gm
        self.facts = facts
        self.aten_fallback = aten_fallback
        self.gaps: list[str] = []
        self.imports: list[str] = []  # modules model.py imports to register the custom ops it calls
        self.graph = copy_graph(gm.graph)
        drop_identities(self.graph)
        out_of_place(self.graph)
        self.graph.eliminate_dead_code()
        self.nodes = list(self.graph.nodes)
        self.pos = {n: i for i, n in enumerate(self.nodes)}
        self.tensors: dict[str, torch.Tensor] = {}
        for n in self.nodes:
            if n.op == "get_attr":
                self.tensors[n.target] = fetch(gm, n.target)
        self.params = {k for k, _ in gm.named_parameters(remove_duplicate=False)}
        self.types: dict[str, str] = {}
        for n in self.nodes:
            for path, typ in module_stack(n):
                self.types.setdefault(path, typ)
        for n in self.nodes:
            if n.op in ("call_module", "call_method") or (n.op == "call_function" and not supported(n.target)):
                raise ExportError(f"node {n.name} ({n.target}) cannot be written as plain PyTorch: "
                                  "torch.export produced a construct otonas does not translate (a control-flow or "
                                  "autocast region). Fix: keep such regions out of the exported forward")
        self._find_layers()
        self._build_tree()

    # --- layers --------------------------------------------------------------------------------
    def layer_call(self, node: fx.Node, target: Any) -> LayerCall:
        values, defaults = arg_values(node, target)
        stack = module_stack(node)
        first = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        return LayerCall(node, target, values, defaults,
                         fqn=lambda v: v.target if v.op == "get_attr" else None,
                         tensor=lambda v: self.tensors.get(v.target) if v.op == "get_attr" else None,
                         module=self.facts.module, module_type=stack[-1][1] if stack else None,
                         rank=self.facts.rank(first) if first is not None else None)

    def _find_layers(self) -> None:
        found: dict[str, list[tuple[fx.Node, LayerSpec]]] = {}
        for n in self.nodes:
            if n.op != "call_function":
                continue
            rule = rule_for(n.target)
            if not rule.implements("layer"):
                continue
            spec = run_layer(rule.layer, self.layer_call(n, n.target))
            if spec is not None:
                found.setdefault(spec.path, []).append((n, spec))
        self.layers: dict[str, LayerSpec] = {}
        self.layer_nodes: dict[fx.Node, LayerSpec] = {}
        for path, uses in found.items():
            specs = {s for _, s in uses}
            if len(specs) == 1 and path:
                self.layers[path] = uses[0][1]
        self._settle_layers()
        for path, uses in found.items():
            if path in self.layers:
                for n, s in uses:
                    self.layer_nodes[n] = s

    def _settle_layers(self) -> None:
        """Drop layers whose path also holds tensors or modules the layer does not own."""
        def ancestors(path: str) -> list[str]:
            parts = path.split(".")
            return [".".join(parts[:i]) for i in range(1, len(parts) + 1)] if path else []

        while True:
            owned = {f"{p}.{s}" for p, spec in self.layers.items() for s in spec.state}
            # module paths that hold something other than a layer's own tensors
            occupied = {a for fqn in self.tensors if fqn not in owned for a in ancestors(fqn.rsplit(".", 1)[0])
                        if "." in fqn}
            occupied |= {a for p in self.layers for a in ancestors(p)[:-1]}
            bad = {p for p in self.layers if p in occupied}
            bad |= {p for p, spec in self.layers.items()
                    if any(f"{p}.{s}" not in self.tensors and s != "num_batches_tracked" for s in spec.state)}
            if not bad:
                return
            for p in bad:
                del self.layers[p]

    # --- tree -----------------------------------------------------------------------------------
    def _build_tree(self) -> None:
        self.root = _Mod("", "", "root", type=self.facts.source_type or None)
        owned = {f"{p}.{s}" for p, spec in self.layers.items() for s in spec.state}
        for path, spec in self.layers.items():
            m = self._mod(path)
            m.kind, m.spec = "layer", spec
        self.raw: dict[str, bool] = {}
        for fqn in self.tensors:
            if fqn in owned:
                continue
            parent, name = fqn.rsplit(".", 1) if "." in fqn else ("", fqn)
            self._mod(parent).tensors[name] = fqn
            self.raw[fqn] = fqn in self.params
        for n in self.nodes:
            paths: list[str] = []
            if n in self.layer_nodes:
                paths.append(self.layer_nodes[n].path)
            for a in n.all_input_nodes:
                if a.op == "get_attr":
                    paths.append(a.target)
            for p in paths:
                parts = p.split(".")
                m = self.root
                for part in parts:
                    if part not in m.children:
                        break
                    m = m.children[part]
                    m.first = min(m.first, self.pos[n])
        self._kinds(self.root)

    def _mod(self, path: str) -> _Mod:
        m = self.root
        if not path:
            return m
        walked = []
        for part in path.split("."):
            walked.append(part)
            if part not in m.children:
                p = ".".join(walked)
                m.children[part] = _Mod(part, p, type=self.types.get(p))
            m = m.children[part]
        return m

    def _kinds(self, m: _Mod) -> None:
        for c in m.children.values():
            self._kinds(c)
        if m.kind in ("root", "layer"):
            return
        names = list(m.children)
        if names and sorted(names, key=lambda s: int(s) if s.isdigit() else -1) == [str(i) for i in
                                                                                   range(len(names))]:
            m.kind = "list"
            m.children = {str(i): m.children[str(i)] for i in range(len(names))}
        else:
            m.kind = "dict"
            clash = [n for n in list(names) + list(m.tensors) if n in _clashes("dict")]
            if clash:
                raise ExportError(f"module '{m.path}' has a child named '{clash[0]}', which nn.ModuleDict reserves; "
                                  "rename it in the model to export")
            m.children = dict(sorted(m.children.items(), key=lambda kv: kv[1].first))

    def declares(self, path: str) -> bool:
        """Whether model.py has a module at ``path`` (modules without layers or tensors are left out)."""
        m: _Mod | None = self.root
        for part in path.split("."):
            m = m.children.get(part) if m is not None else None
        return m is not None

    def access(self, path: str) -> str:
        expr, m = "self", self.root
        for part in path.split(".") if path else []:
            child = m.children.get(part) if m is not None else None
            if m is not None and m.kind == "list" and child is not None:
                expr += f"[{part}]"
            elif m is not None and m.kind == "dict" and child is not None and not is_identifier(part):
                expr += f'["{part}"]'
            elif is_identifier(part) and (m is None or part not in _clashes(m.kind)):
                expr += f".{part}"
            else:
                expr = f'getattr({expr}, "{part}")'
            m = child  # type: ignore[assignment]
        return expr

    # --- __init__ -------------------------------------------------------------------------------
    def _ctor(self, m: _Mod, indent: int, lead: int = 0) -> list[str]:
        """Constructor source of module ``m`` whose first line starts at column ``indent + lead``."""
        if m.kind == "layer":
            assert m.spec is not None
            return [m.spec.ctor]
        pad = " " * (indent + 4)
        kids = list(m.children.values())
        comment = ""
        short = (m.type or "").rsplit(".", 1)[-1]
        if short and short not in PLAIN:
            comment = f"  # {short}"
        if m.kind == "list":
            items = [self._ctor(k, indent + 4) for k in kids]
            one = "nn.ModuleList([" + ", ".join(i[0] for i in items) + "])"
            if (all(len(i) == 1 and not _COMMENT.search(i[0]) for i in items)
                    and indent + lead + len(one) + 1 <= LINE + 10 and not comment):
                return [one]
            lines = ["nn.ModuleList([" + comment]
            for i in items:
                lines.append(pad + i[0])
                lines += i[1:]
                _suffix(lines, ",")
            return lines + [" " * indent + "])"]
        if not kids:
            return ["nn.ModuleDict()" + comment]
        keyword = all(is_identifier(k.name) for k in kids)
        lines = ["nn.ModuleDict(dict(" + comment if keyword else "nn.ModuleDict({" + comment]
        for k in kids:
            key = f"{k.name}=" if keyword else f'"{k.name}": '
            body = self._ctor(k, indent + 4, len(key))
            lines.append(pad + key + body[0])
            lines += body[1:]
            _suffix(lines, ",")
        return lines + [" " * indent + ("))" if keyword else "})")]

    def _tensor_lines(self, m: _Mod) -> list[str]:
        out = []
        for name, fqn in m.tensors.items():
            t = self.tensors[fqn]
            shape = ", ".join(str(int(s)) for s in t.shape) if t.dim() else "()"
            dtype = "" if t.dtype == torch.float32 else f", dtype={t.dtype}"
            value = f"torch.zeros({shape}{dtype})"
            owner = self.access(m.path)
            if self.raw[fqn]:
                grad = "" if t.is_floating_point() or t.is_complex() else ", requires_grad=False"
                value = f"nn.Parameter({value}{grad})"
                if is_identifier(name) and name not in _clashes(m.kind):
                    out.append(f"{owner}.{name} = {value}")
                else:
                    out.append(f'{owner}.register_parameter("{name}", {value})')
            else:
                out.append(f'{owner}.register_buffer("{name}", {value})')
        for c in m.children.values():
            out += self._tensor_lines(c)
        return out

    def init_lines(self) -> list[str]:
        lines = ["super().__init__()"]
        order = sorted([(c.first, 0, c) for c in self.root.children.values()], key=lambda t: t[0])
        by_first = {fqn: min((self.pos[u] for n in self.nodes if n.op == "get_attr" and n.target == fqn
                              for u in n.users), default=1 << 30) for fqn in self.root.tensors.values()}
        items: list[tuple[int, int, Any]] = order + [(by_first[f], 1, f) for f in self.root.tensors.values()]
        for _, kind, item in sorted(items, key=lambda t: (t[0], t[1])):
            if kind == 1:
                lines += self._tensor_lines(_Mod("", "", "root", tensors={item.rsplit(".", 1)[-1]: item}))
                continue
            plain = is_identifier(item.name) and item.name not in _clashes("root")
            target = f"self.{item.name} = " if plain else f'self.add_module("{item.name}", '
            body = self._ctor(item, 8, len(target))
            lines.append(f"{target}{body[0]}")
            lines += [b[8:] for b in body[1:]]
            if not plain:
                _suffix(lines, ")")
            lines += self._tensor_lines(item)
        return lines

    def state_keys(self) -> list[str]:
        keys: list[str] = []

        def walk(m: _Mod) -> None:
            if m.kind == "layer":
                assert m.spec is not None
                keys.extend(f"{m.path}.{s}" for s in m.spec.state)
                return
            keys.extend(m.tensors.values())
            for c in m.children.values():
                walk(c)

        walk(self.root)
        return keys

    # --- helpers rules call ---------------------------------------------------------------------
    def device_expr(self) -> str | None:
        for fqn in self.tensors:
            parent, name = fqn.rsplit(".", 1) if "." in fqn else ("", fqn)
            return f"{self.access(parent)}.{name}.device" if is_identifier(name) else None
        return None

    def attention_dropout(self, node: fx.Node) -> float:
        """nn.MultiheadAttention passes dropout only in train mode, so the capture shows 0.0."""
        stack = module_stack(node)
        if stack and torch_module_class(stack[-1][1]) == "MultiheadAttention":
            mod = self.facts.module(stack[-1][0])
            return float(getattr(mod, "dropout", 0.0) or 0.0)
        return 0.0

    def need_import(self, module: str) -> None:
        if module not in self.imports:
            self.imports.append(module)

    def gap(self, what: str) -> None:
        if what not in self.gaps:
            self.gaps.append(what)


_COMMENT = re.compile(r"  # [A-Za-z_][A-Za-z0-9_]*$")


def _suffix(lines: list[str], text: str) -> None:
    """Append ``text`` (a comma, a closing paren) to the last line, before the class-name comment
    ``_ctor`` may end it with (``nn.ModuleDict()  # Block``), never inside it."""
    m = _COMMENT.search(lines[-1])
    lines[-1] = lines[-1][:m.start()] + text + m.group(0) if m else lines[-1] + text
