"""Write a built network (a ``torch.fx.GraphModule`` from ``otonas.build``) as one plain
PyTorch module: layers declared in ``__init__`` under their original module paths, a
straight-line ``forward``. Reads the graph, writes text; never runs the network."""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from .._errors import OtonasError
from ._expr import ADD, ATOM, MUL, UNARY, Call, Expr, is_identifier, literal
from ._layers import LAYER_RULES, LayerCall, LayerSpec, run_rule, torch_module_class
from ._ops import CODE_RULES, fn, method
from ._passes import copy_graph, drop_identities, is_random, mutated_arg, out_of_place, packet

__all__ = ["ExportError", "Generated", "ModelFacts", "generate"]

LINE = 100  # longest line the forward writes by inlining expressions
_RESERVED = {"self", "F", "nn", "torch", "super", "float", "int", "len", "range", "getattr", "tuple", "list", "dict"}
_BLOCK_TYPES = {"MultiheadAttention", "TransformerEncoderLayer", "TransformerDecoderLayer", "TransformerEncoder",
                "TransformerDecoder", "Transformer"}  # torch.nn modules whose insides are worth a comment
_PLAIN = {"Sequential", "ModuleList", "ModuleDict", "Module"}


class ExportError(OtonasError):
    """The network could not be written as ``model.py`` + ``model.safetensors``, or an export could not be loaded."""


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
class Generated:
    """The generated ``model.py`` and what it declares."""

    source: str
    class_name: str
    layers: dict[str, LayerSpec]
    raw: dict[str, bool]  # FQN of a tensor declared directly (not by a layer) -> is a parameter
    state: list[str]  # state_dict keys of the generated module, in order
    gaps: list[str] = field(default_factory=list)


# --- reading the graph ----------------------------------------------------------------------
def _stack(node: fx.Node) -> list[tuple[str, str]]:
    st = node.meta.get("nn_module_stack") or {}
    return [v for v in st.values() if isinstance(v, tuple) and len(v) == 2 and not str(v[0]).startswith("_empty")]


def _values(node: fx.Node, target: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Arguments of a node by schema name, and the schema defaults."""
    schema = getattr(target, "_schema", None)
    if schema is None:
        names = ["a", "b", "c"]
        return {names[i]: a for i, a in enumerate(node.args)} | dict(node.kwargs), {}
    values: dict[str, Any] = {}
    defaults: dict[str, Any] = {}
    for i, a in enumerate(schema.arguments):
        if a.has_default_value():
            defaults[a.name] = a.default_value
        if not a.kwarg_only and i < len(node.args):
            values[a.name] = node.args[i]
        elif a.name in node.kwargs:
            values[a.name] = node.kwargs[a.name]
    return values, defaults


def _code_key(target: Any) -> Any:
    if getattr(target, "__module__", None) in ("_operator", "operator"):
        return f"operator.{target.__name__}"
    return target


_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)\n(.*)')
_LHS = re.compile(r"^\s*([A-Za-z_]\w*(?:\s*,\s*[A-Za-z_]\w*)*)\s*,?\s*(?::[^=]+)?(?:[-+*/@%|&^]|//)?=(?!=)")
_TORCH_DIR = torch.__file__.rsplit("/", 1)[0] + "/"


def _source_names(node: fx.Node, cache: dict[tuple[str, bool], tuple[str, ...]], *, inside_torch: bool = False
                  ) -> tuple[str, ...]:
    """Variable names the user's own code assigned this value to, from the captured stack
    (``inside_torch``: the names in torch's own code, for the insides of torch's blocks)."""
    trace = node.meta.get("stack_trace")
    if not trace:
        return ()
    if (trace, inside_torch) not in cache:
        names: tuple[str, ...] = ()
        frames = _FRAME.findall(trace)
        for file, _, _, code in reversed(frames):
            if file.startswith(_TORCH_DIR) and not inside_torch:
                continue
            m = _LHS.match(code)
            if m:
                names = tuple(n.strip() for n in m.group(1).split(","))
            break
        cache[(trace, inside_torch)] = names
    return cache[(trace, inside_torch)]


# --- the module tree --------------------------------------------------------------------------
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


class _Generator:
    def __init__(self, gm: fx.GraphModule, facts: ModelFacts, *, aten_fallback: bool) -> None:
        self.gm = gm
        self.facts = facts
        self.aten_fallback = aten_fallback
        self.gaps: list[str] = []
        self.graph = copy_graph(gm.graph)
        drop_identities(self.graph)
        out_of_place(self.graph)
        self.graph.eliminate_dead_code()
        self.nodes = list(self.graph.nodes)
        self.pos = {n: i for i, n in enumerate(self.nodes)}
        self.tensors: dict[str, torch.Tensor] = {}
        for n in self.nodes:
            if n.op == "get_attr":
                self.tensors[n.target] = _fetch(gm, n.target)
        self.params = {k for k, _ in gm.named_parameters(remove_duplicate=False)}
        self.types: dict[str, str] = {}
        for n in self.nodes:
            for path, typ in _stack(n):
                self.types.setdefault(path, typ)
        for n in self.nodes:
            if n.op in ("call_module", "call_method") or (n.op == "call_function" and not _supported(n.target)):
                raise ExportError(f"node {n.name} ({n.target}) cannot be written as plain PyTorch: "
                                  "torch.export produced a construct otonas does not translate (a control-flow or "
                                  "autocast region). Fix: keep such regions out of the exported forward")
        self._find_layers()
        self._build_tree()

    # --- layers --------------------------------------------------------------------------------
    def layer_call(self, node: fx.Node, target: Any) -> LayerCall:
        values, defaults = _values(node, target)
        stack = _stack(node)
        first = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        return LayerCall(node, target, values, defaults,
                         fqn=lambda v: v.target if v.op == "get_attr" else None,
                         tensor=lambda v: self.tensors.get(v.target) if v.op == "get_attr" else None,
                         module=self.facts.module, module_type=stack[-1][1] if stack else None,
                         rank=self.facts.rank(first) if first is not None else None)

    def _find_layers(self) -> None:
        found: dict[str, list[tuple[fx.Node, LayerSpec | None]]] = {}
        for n in self.nodes:
            if n.op != "call_function":
                continue
            fn_ = LAYER_RULES.lookup(n.target)
            if fn_ is None:
                continue
            spec = run_rule(fn_, self.layer_call(n, n.target))
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
        while True:
            owned = {f"{p}.{s}" for p, spec in self.layers.items() for s in spec.state}
            bad = set()
            for fqn in self.tensors:
                if fqn in owned:
                    continue
                parent = fqn.rsplit(".", 1)[0] if "." in fqn else ""
                for p in self.layers:
                    if parent == p or parent.startswith(p + "."):
                        bad.add(p)
            for p in self.layers:
                for q in self.layers:
                    if q != p and q.startswith(p + "."):
                        bad.add(p)
            for p, spec in self.layers.items():
                if any(f"{p}.{s}" not in self.tensors and s != "num_batches_tracked" for s in spec.state):
                    bad.add(p)
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
        if short and short not in _PLAIN:
            comment = f"  # {short}"
        if m.kind == "list":
            items = [self._ctor(k, indent + 4) for k in kids]
            one = "nn.ModuleList([" + ", ".join(i[0] for i in items) + "])"
            if all(len(i) == 1 for i in items) and indent + lead + len(one) + 1 <= LINE + 10 and not comment:
                return [one]
            lines = ["nn.ModuleList([" + comment]
            for i in items:
                lines.append(pad + i[0])
                lines += i[1:]
                lines[-1] += ","
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
            lines[-1] += ","
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
            target = f"{self.access(item.path)} = "
            body = self._ctor(item, 8, len(target))
            lines.append(f"{target}{body[0]}")
            lines += [b[8:] for b in body[1:]]
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
        stack = _stack(node)
        if stack and torch_module_class(stack[-1][1]) == "MultiheadAttention":
            mod = self.facts.module(stack[-1][0])
            return float(getattr(mod, "dropout", 0.0) or 0.0)
        return 0.0

    def gap(self, what: str) -> None:
        if what not in self.gaps:
            self.gaps.append(what)


def _fetch(gm: fx.GraphModule, target: str) -> torch.Tensor:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _supported(target: Any) -> bool:
    return isinstance(target, torch._ops.OpOverload) or getattr(target, "__module__", None) in ("_operator",
                                                                                             "operator")


# --- the forward -----------------------------------------------------------------------------
_SYM_OPS = {"add", "sub", "mul", "floordiv", "neg", "truediv", "mod", "pow"}
_SIZES = {"aten.sym_size", "aten.sym_numel", "aten.sym_stride", "aten.sym_storage_offset"}

Poly = dict[tuple[str, ...], int]


class _Forward:
    """Straight-line forward: one statement per value that is used twice, crosses a block
    boundary or would make a line too long; everything else is inlined into its user."""

    def __init__(self, gen: _Generator) -> None:
        self.gen = gen
        self.nodes = gen.nodes
        self.pos = gen.pos
        self.names: dict[fx.Node, str] = {}
        self.holder: dict[str, fx.Node] = {}  # variable name -> node it holds now
        self.done: set[fx.Node] = set()
        self.lines: list[str] = []
        self.hint_cache: dict[tuple[str, bool], tuple[str, ...]] = {}
        self.current_block = ""
        self.block = {n: self._block(n) for n in self.nodes}
        self.type_count: dict[str, int] = {}
        for typ in gen.types.values():
            self.type_count[typ] = self.type_count.get(typ, 0) + 1
        self.key = {n: self._statement_key(n) for n in self.nodes}
        self.building: list[list[Any]] = []  # [node, deepest inlined argument] of expressions being written
        self.depth: dict[fx.Node, int] = {}
        self.block_inputs: dict[str, list[str]] = {}  # names a block read from outside, first first
        self.alias: tuple[str, str] | None = None  # (block path, local name) while inside a long-named block
        self._alias_holder = fx.Graph().placeholder("block")  # keeps the alias name from being reused
        self.kind = {n: self._kind(n) for n in self.nodes}
        self.impure_pos = [self.pos[n] for n in self.nodes if self._impure(n)]
        self.inline = {n for n in self.nodes if self._inlinable(n)}

    # --- classification -------------------------------------------------------------------------
    def _block(self, n: fx.Node) -> str | None:
        stack = _stack(n)
        if not stack:
            return None
        layers = self.gen.layers
        while stack:
            path, typ = stack[-1]
            cls = torch_module_class(typ)
            if path in layers or (cls is not None and cls not in _BLOCK_TYPES):
                stack = stack[:-1]
                continue
            break
        return stack[-1][0] if stack else ""

    def _statement_key(self, n: fx.Node) -> tuple[str, ...] | None:
        """The user's source statement a node comes from: its stack up to the innermost frame
        outside torch (inside torch's own blocks, such as nn.MultiheadAttention, torch's line)."""
        trace = n.meta.get("stack_trace")
        if not trace:
            return None
        frames = [f"{file}:{line}" for file, line, _, _ in _FRAME.findall(trace)]
        files = [file for file, _, _, _ in _FRAME.findall(trace)]
        user = [i for i, f in enumerate(files) if not f.startswith(_TORCH_DIR)]
        if not user:
            return tuple(frames)
        if self._in_torch_block(n):
            return tuple(frames)
        return tuple(frames[:user[-1] + 1])

    def _in_torch_block(self, n: fx.Node) -> bool:
        b = self.block.get(n)
        return bool(b) and torch_module_class(self.gen.types.get(b or "", "")) in _BLOCK_TYPES

    def _kind(self, n: fx.Node) -> str:
        if n.op in ("placeholder", "get_attr", "output"):
            return n.op
        t = n.target
        if t is operator.getitem and isinstance(n.args[0], fx.Node) and self._unpacked(n.args[0]):
            return "item"
        if getattr(t, "__module__", None) in ("_operator", "operator") and t.__name__ in _SYM_OPS:
            return "sym"
        if packet(t) in _SIZES:
            return "size"
        if n in self.gen.layer_nodes:
            return "layer"
        return "op"

    def _unpacked(self, n: fx.Node) -> bool:
        """A multi-output node whose parts are all taken by getitem: ``a, b = x.split(...)``
        when the number of parts is known, else ``parts = ...`` and ``parts[0]``."""
        if not n.users or not all(u.target is operator.getitem and isinstance(u.args[1], int) for u in n.users):
            return False
        count = self._count(n)
        return count is not None and max(u.args[1] for u in n.users) < count

    def _count(self, n: fx.Node) -> int | None:
        schema = getattr(n.target, "_schema", None)
        if schema is not None and len(schema.returns) > 1:
            return len(schema.returns)
        if packet(n.target) in ("aten.split_with_sizes", "aten.unsafe_split_with_sizes"):
            sizes = n.args[1] if len(n.args) > 1 else n.kwargs.get("split_sizes")
            return len(sizes) if isinstance(sizes, (list, tuple)) else None
        orig = self.gen.facts.original_node(n)
        val = orig.meta.get("val") if orig is not None else n.meta.get("val")
        if packet(n.target) in ("aten.unbind", "aten.chunk", "aten.split") and isinstance(val, (list, tuple)):
            return len(val)
        return None

    def _impure(self, n: fx.Node) -> bool:
        if n.op != "call_function":
            return False
        return mutated_arg(n) is not None or is_random(n) or (not n.users and self.kind.get(n) != "sym")

    def _inlinable(self, n: fx.Node) -> bool:
        if self.kind[n] not in ("op", "layer") or self._impure(n) or len(n.users) != 1 or self._unpacked(n):
            return False
        (u,) = n.users
        if sum(1 for a in _flat(u.args, u.kwargs) if a is n) != 1:
            return False
        bn, bu = self.block[n], self.block.get(u)
        if u.op == "output":
            bu = ""
        if bn is not None and bu is not None and bn != bu:
            return False
        lo, hi = self.pos[n], self.pos[u]
        return not any(lo < p < hi for p in self.impure_pos)

    # --- rendering -------------------------------------------------------------------------------
    def render(self, v: Any, inlined: list[tuple[fx.Node, str]]) -> Expr:
        if isinstance(v, fx.Node):
            if v in self.names:
                return Expr(self.names[v])
            k = self.kind[v]
            if k == "get_attr":
                parent, name = v.target.rsplit(".", 1) if "." in v.target else ("", v.target)
                owner = self.access(parent)
                return Expr(f"{owner}.{name}" if is_identifier(name) else f'getattr({owner}, "{name}")')
            if k == "sym":
                return self._sym(v, inlined)
            if v in self.inline and v not in self.done:
                consumer = self.building[-1]
                sub: list[tuple[fx.Node, str]] = []
                e = self.expr(v, sub)
                if self._may_inline(v, consumer[0]):
                    inlined.extend(sub)
                    inlined.append((v, e.text))
                    consumer[1] = max(consumer[1], self.depth[v])
                    return e
                self.statement(v)  # written now, before the statement that uses it
                return Expr(self.names[v])
            raise ExportError(f"internal: value {v.name} ({v.target}) used before it was written")
        if isinstance(v, (list, tuple)):
            inner = [self.render(x, inlined).text for x in v]
            if isinstance(v, tuple):
                return Expr(f"({inner[0]},)" if len(inner) == 1 else f"({', '.join(inner)})")
            return Expr(f"[{', '.join(inner)}]")
        if isinstance(v, torch.device):
            dev = self.gen.device_expr()
            return Expr(dev) if dev else literal(v)
        return literal(v)

    def _may_inline(self, v: fx.Node, u: fx.Node) -> bool:
        """Write ``v`` inside its one user ``u``? Yes when the user's own code did (same source
        statement), or for a short chain of one-input calls: ``F.relu(self.bn(self.conv(x)))``."""
        depth = self.depth[v] + 1
        kv, ku = self.key.get(v), self.key.get(u)
        if u.op == "output" or (kv is not None and kv == ku):
            return depth <= 6  # and the line-width limit
        if kv is None or ku is None:
            return depth <= 3
        return depth <= 3 and self._tensor_inputs(u) == 1

    def _tensor_inputs(self, n: fx.Node) -> int:
        if n.op == "output":
            return len(_flat(n.args, {}))
        return len({a for a in n.all_input_nodes if self.kind.get(a) not in ("get_attr", "sym", "size")})

    def expr(self, n: fx.Node, inlined: list[tuple[fx.Node, str]]) -> Expr:
        self.building.append([n, 0])
        try:
            e = self._expr(n, inlined)
        finally:
            _, deepest = self.building.pop()
        self.depth[n] = deepest + 1
        return e

    def _expr(self, n: fx.Node, inlined: list[tuple[fx.Node, str]]) -> Expr:
        render = lambda v: self.render(v, inlined)  # noqa: E731
        spec = self.gen.layer_nodes.get(n)
        if spec is not None:
            values, _ = _values(n, n.target)
            return Expr(f"{self.access(spec.path)}({render(values[spec.input]).text})")
        values, defaults = _values(n, n.target)
        call = Call(n, n.target, values, defaults, render, self.gen)
        fn_ = None if self.gen.aten_fallback else CODE_RULES.lookup(_code_key(n.target))
        e = fn_(call) if fn_ is not None else None
        return e if e is not None else self._generic(call)

    def _generic(self, c: Call) -> Expr:
        t = c.target
        schema = getattr(t, "_schema", None)
        if schema is None:
            raise ExportError(f"node {c.node.name}: no way to write {t} as Python")
        name = schema.name.split("::")[-1]
        public = getattr(torch, name, None)
        args, kw = [], []
        positional = True
        for a in schema.arguments:
            if a.name not in c.values:
                positional = positional and a.kwarg_only
                continue
            v = c.values[a.name]
            if a.name in ("layout", "pin_memory") or (a.name == "device" and not self.gen.device_expr()):
                continue
            text = c.render(v).text
            if positional and not a.kwarg_only:
                args.append(text)
            else:
                kw.append(f"{a.name}={text}")
        if public is not None and callable(public) and not name.startswith("_") and not self.gen.aten_fallback:
            return fn(f"torch.{name}", *args, *kw)
        if mutated_arg(c.node) == 0 and not self.gen.aten_fallback:
            return method(c.render(c.values[schema.arguments[0].name]), name, *args[1:], *kw)
        self.gen.gap(f"{t} has no public PyTorch equivalent: written as torch.ops.aten.{name}.{t._overloadname}")
        return fn(f"torch.ops.aten.{name}.{t._overloadname}", *args, *kw)

    def _sym(self, n: fx.Node, inlined: list[tuple[fx.Node, str]]) -> Expr:
        poly = self._poly(n)
        if poly is not None:
            return _render_poly(poly)
        values, defaults = _values(n, n.target)
        fn_ = CODE_RULES.lookup(_code_key(n.target))
        assert fn_ is not None
        e = fn_(Call(n, n.target, values, defaults, lambda v: self.render(v, inlined), self.gen))
        assert e is not None
        return e

    def _poly(self, v: Any) -> Poly | None:
        if isinstance(v, bool):
            return None
        if isinstance(v, int):
            return {(): v} if v else {}
        if not isinstance(v, fx.Node):
            return None
        if v in self.names:
            return {(self.names[v],): 1}
        if self.kind.get(v) != "sym":
            return None
        op = v.target.__name__
        args = [self._poly(a) for a in v.args]
        if any(a is None for a in args):
            return None
        if op == "neg":
            return {k: -c for k, c in args[0].items()}  # type: ignore[union-attr]
        a, b = args[0], args[1] if len(args) > 1 else None
        assert a is not None
        if op in ("add", "sub") and b is not None:
            out = dict(a)
            for k, c in b.items():
                out[k] = out.get(k, 0) + (c if op == "add" else -c)
            return {k: c for k, c in out.items() if c}
        if op == "mul" and b is not None:
            out = {}
            for ka, ca in a.items():
                for kb, cb in b.items():
                    k = tuple(sorted(ka + kb))
                    out[k] = out.get(k, 0) + ca * cb
            return {k: c for k, c in out.items() if c}
        if op == "floordiv" and b is not None and set(b) == {()} and b[()] > 0:
            d = b[()]
            if all(c % d == 0 for c in a.values()):
                return {k: c // d for k, c in a.items()}
        return None

    # --- statements ------------------------------------------------------------------------------
    def consumed(self, u: fx.Node, now: set[fx.Node]) -> bool:
        if u in self.done or u in now:
            return True
        if self.kind.get(u) == "sym":
            return all(self.consumed(w, now) for w in u.users)
        return False

    def live(self, name: str, now: set[fx.Node]) -> bool:
        held = self.holder.get(name)
        if held is self._alias_holder:
            return self.alias is not None and self.alias[1] == name
        return held is not None and not all(self.consumed(u, now) for u in held.users)

    def statement(self, n: fx.Node) -> None:
        self._comment(n)
        while True:
            inlined: list[tuple[fx.Node, str]] = []
            e = self.expr(n, inlined)
            width = 8 + len(e.text) + 12
            if width <= LINE or not inlined:
                break
            # cut the longest inner expression that fits a line of its own (bottom-up packing)
            fits = [t for t in inlined if 8 + len(t[1]) + 12 <= LINE]
            cut = max(fits, key=lambda t: len(t[1])) if fits else min(inlined, key=lambda t: len(t[1]))
            self.statement(cut[0])
        self._write(n, e, inlined)

    def _write(self, n: fx.Node, e: Expr, inlined: list[tuple[fx.Node, str]]) -> None:
        now = {n} | {m for m, _ in inlined}
        block = self.block[n]
        if block:
            parts = block.split(".")
            scopes = [".".join(parts[:i]) for i in range(len(parts), 0, -1)]
            for a in sorted({a for m in now for a in m.all_input_nodes if a in self.names}, key=self.pos.get):
                for scope in scopes:
                    if a.op == "placeholder" or not _within(self.block.get(a), scope):
                        known = self.block_inputs.setdefault(scope, [])
                        if self.names[a] not in known:
                            known.append(self.names[a])
        if self.kind[n] == "size" or n.users:
            targets = self._targets(n, now, e)
            self.lines.append(f"{targets} = {e.text}")
        else:
            self.lines.append(e.text)
        self.done |= now

    def _targets(self, n: fx.Node, now: set[fx.Node], e: Expr) -> str:
        if n in self.inline or not self._unpacked(n):
            name = self._name(n, now)
            self._bind(n, name)
            return name
        # a, b = x.split(...)
        items = {u.args[1]: u for u in n.users}
        count = self._count(n)
        assert count is not None
        hints = _source_names(n, self.hint_cache, inside_torch=self._in_torch_block(n))
        names = []
        for i in range(count):
            u = items.get(i)
            if u is None:
                names.append("_")
                continue
            hint = hints[i] if len(hints) == count else None
            name = self._fresh(hint or self._first_hint(u) or f"x{i}", now | set(items.values()))
            self._bind(u, name)
            self.done.add(u)
            names.append(name)
        return ", ".join(names)

    def _first_hint(self, n: fx.Node) -> str | None:
        hints = _source_names(n, self.hint_cache, inside_torch=self._in_torch_block(n))
        return hints[0] if len(hints) == 1 else None

    def _bind(self, n: fx.Node, name: str) -> None:
        self.names[n] = name
        self.holder[name] = n

    def _fresh(self, base: str, now: set[fx.Node]) -> str:
        base = base if is_identifier(base) and base not in _RESERVED else "h"
        if not self.live(base, now):
            return base
        stem = base + "_" if base[-1].isdigit() else base
        i = 2
        while self.live(f"{stem}{i}", now):
            i += 1
        return f"{stem}{i}"

    def _name(self, n: fx.Node, now: set[fx.Node]) -> str:
        block = self.block[n]
        args = [a for m in now for a in m.all_input_nodes if a in self.names and self.kind[a] not in ("size",)]
        dying = sorted({a for a in args if all(self.consumed(u, now) for u in a.users)}, key=lambda a: self.pos[a])
        hint = self._hint(n)
        if self.kind[n] == "size":
            return self._fresh(hint or self._size_name(n), now)
        if block:
            escapes = any(not _within(self.block.get(u), block) for u in n.users)
            if escapes:
                # the block's output takes the name its input had: x = block(x)
                for name in self.block_inputs.get(block, []):
                    if not self.live(name, now):
                        return name
        if hint:
            return self._fresh(hint, now)
        if dying:
            return self.names[dying[0]]
        return self._fresh("h", now)

    def _hint(self, n: fx.Node) -> str | None:
        hints = _source_names(n, self.hint_cache, inside_torch=self._in_torch_block(n))
        if self.kind[n] == "size" and hints:
            d = n.args[1] if len(n.args) > 1 else 0
            return hints[d] if isinstance(d, int) and 0 <= d < len(hints) and len(hints) > 1 else None
        return hints[0] if len(hints) == 1 else None

    def _size_name(self, n: fx.Node) -> str:
        d = n.args[1] if len(n.args) > 1 else None
        return "batch" if d == 0 and packet(n.target) == "aten.sym_size" else "size"

    def _comment_block(self, n: fx.Node) -> str | None:
        """The outermost module around ``n`` of a class the network uses more than once
        (a ResNet BasicBlock, a ViT EncoderBlock): the unit a reader looks for."""
        for path, typ in _stack(n):
            short = typ.rsplit(".", 1)[-1]
            leaf = torch_module_class(typ) is not None and short not in _BLOCK_TYPES
            if path and not leaf and not self._plain(path, short) and self.type_count.get(typ, 0) > 1:
                return path
        return None

    def _plain(self, path: str, short: str) -> bool:
        """A container without a forward of its own (nn.Sequential and its subclasses)."""
        if short in _PLAIN:
            return True
        mod = self.gen.facts.module(path)
        return mod is not None and type(mod).forward in (nn.Sequential.forward, nn.Module.forward)

    def _comment(self, n: fx.Node) -> None:
        """``# layer1.0 (BasicBlock)`` where a block starts; a short local name for a block
        whose path is long (``block = self.trunk_output.block1["block1-0"]``)."""
        b = self._comment_block(n)
        if b is None or b == self.current_block:
            return
        self.current_block = b
        short = self.gen.types.get(b, "").rsplit(".", 1)[-1]
        self.lines.append(f"# {b}" + (f" ({short})" if short else ""))
        self.alias = None
        full = self.gen.access(b)
        if len(full) > 24:
            name = self._fresh("block", set())
            self.lines.append(f"{name} = {full}")
            self._bind(self._alias_holder, name)
            self.alias = (b, name)

    def access(self, path: str) -> str:
        full = self.gen.access(path)
        if self.alias is not None:
            b, name = self.alias
            if path == b or path.startswith(b + "."):
                return name + full[len(self.gen.access(b)):]
        return full

    # --- the whole forward -----------------------------------------------------------------------
    def run(self, signature: list[str], unpack: list[str], out: Callable[[Callable[[Any], Expr]], str]) -> list[str]:
        del signature
        self.lines += unpack
        for n in self.nodes:
            k = self.kind[n]
            if n.op == "placeholder":
                name = n.name if is_identifier(n.name) and n.name not in _RESERVED else n.name + "_"
                self._bind(n, name)
                self.done.add(n)
            elif k in ("get_attr", "sym", "item") or n in self.inline:
                continue
            elif n.op == "output":
                inlined: list[tuple[fx.Node, str]] = []
                self.building.append([n, 0])
                self.lines.append("return " + out(lambda v: self.render(v, inlined)))
            else:
                self.statement(n)
        return self.lines


def _within(b: str | None, block: str) -> bool:
    if b is None:
        return True
    return b == block or b.startswith(block + ".")


def _flat(args: Any, kwargs: Any) -> list[Any]:
    out: list[Any] = []
    fx.node.map_arg((args, kwargs), lambda a: out.append(a) or a)
    return out


def _render_poly(poly: Poly) -> Expr:
    if not poly:
        return Expr("0")
    terms = sorted(poly.items(), key=lambda kv: (-len(kv[0]), kv[0]))
    parts: list[tuple[int, str]] = []
    for names, c in terms:
        if not names:
            parts.append((1 if c > 0 else -1, str(abs(c))))
            continue
        body = " * ".join(names)
        if abs(c) != 1:
            body = f"{body} * {abs(c)}"
        parts.append((1 if c > 0 else -1, body))
    text = ("-" if parts[0][0] < 0 else "") + parts[0][1]
    for sign, body in parts[1:]:
        text += (" + " if sign > 0 else " - ") + body
    if len(parts) > 1:
        return Expr(text, ADD)
    if parts[0][0] < 0:
        return Expr(text, UNARY)
    return Expr(text, MUL if " * " in text else ATOM)


# --- inputs and outputs --------------------------------------------------------------------------
def _kids(spec: Any) -> list[Any]:
    children = getattr(spec, "children", None)
    return list(children()) if callable(children) else list(spec.children_specs)


def _io(gm: fx.GraphModule, placeholders: list[str], gaps: list[str]) -> tuple[list[str], list[str], Any]:
    info = getattr(gm.graph._codegen, "pytree_info", None)
    if info is None or info.in_spec is None:
        return placeholders, [], None
    spec = info.in_spec
    names = iter(placeholders)
    params: list[str] = []
    unpack: list[str] = []
    if spec.type is tuple and spec.num_children == 2 and _kids(spec)[1].type is dict:
        args_spec, kw_spec = _kids(spec)
    else:
        args_spec, kw_spec = spec, None

    def take(s: Any, default: str) -> str:
        if s.is_leaf():
            return next(names)
        holder = default
        parts = [take(c, f"{default}_{i}") for i, c in enumerate(_kids(s))]
        if s.type in (tuple, list):
            unpack.append(f"{', '.join(parts)}{',' if len(parts) == 1 else ''} = {holder}")
        elif s.type is dict:
            unpack.extend(f'{p} = {holder}["{k}"]' for k, p in zip(s.context, parts))
        else:
            raise ExportError(f"forward takes a {s.type.__name__} input; model.py supports tensors, tuples, lists "
                              "and dicts of tensors")
        return holder

    for i, s in enumerate(_kids(args_spec)):
        params.append(take(s, f"input{i}"))
    if kw_spec is not None and kw_spec.num_children:
        params.append("*")
        for k, s in zip(kw_spec.context, _kids(kw_spec)):
            params.append(take(s, k))
    return params, unpack, info.out_spec


def _render_out(spec: Any, leaves: list[Expr], gaps: list[str]) -> str:
    it = iter(leaves)

    def go(s: Any) -> str:
        if s is None or s.is_leaf():
            return next(it).text
        kids = [go(c) for c in _kids(s)]
        if s.type is list:
            return "[" + ", ".join(kids) + "]"
        if s.type is dict:
            return "{" + ", ".join(f"{k!r}: {v}" for k, v in zip(s.context, kids)) + "}"
        if s.type is type(None):
            return "None"
        if s.type is not tuple:
            gaps.append(f"forward returned a {s.type.__name__}; model.py returns a plain tuple")
        return "(" + ", ".join(kids) + ("," if len(kids) == 1 else "") + ")"

    return go(spec)


# --- the file --------------------------------------------------------------------------------------
def generate(gm: fx.GraphModule, facts: ModelFacts, *, loader: str, aten_fallback: bool = False) -> Generated:
    """Write ``gm`` as a ``model.py`` source whose class is ``facts.class_name``."""
    gen = _Generator(gm, facts, aten_fallback=aten_fallback)
    placeholders = [n.name if is_identifier(n.name) and n.name not in _RESERVED else n.name + "_"
                    for n in gen.nodes if n.op == "placeholder"]
    params, unpack, out_spec = _io(gm, placeholders, gen.gaps)
    fwd = _Forward(gen)

    def out(render: Callable[[Any], Expr]) -> str:
        (node,) = [n for n in gen.nodes if n.op == "output"]
        leaves = node.args[0]
        leaves = list(leaves) if isinstance(leaves, (list, tuple)) else [leaves]
        exprs = [render(v) for v in leaves]
        if out_spec is None:
            return exprs[0].text if len(exprs) == 1 else "(" + ", ".join(e.text for e in exprs) + ")"
        text = _render_out(out_spec, exprs, gen.gaps)
        return text[1:-1] if text.startswith("(") and text.endswith(")") and len(exprs) > 1 and \
            out_spec.type is tuple else text

    body = fwd.run(params, unpack, out)
    init = gen.init_lines()
    uses_f = any("F." in line for line in body)
    name = facts.class_name
    lines = [f'"""{facts.docstring.strip()}\n"""' if facts.docstring else '"""Generated by otonas."""', ""]
    lines += ["import json", "import math", "import mmap", "import os", "import zlib", "", "import torch"]
    if uses_f:
        lines.append("import torch.nn.functional as F")
    lines += ["from torch import nn", "", f'__all__ = ["{name}", "load"]', "", ""]
    lines.append(f"class {name}(nn.Module):")
    summary = f"{facts.source_type.rsplit('.', 1)[-1] or name} as otonas built it"
    lines.append(f'    """{summary}; names follow the original {facts.source_type or "network"}."""')
    lines.append("")
    lines.append("    def __init__(self):")
    lines += [f"        {x}" for x in init]
    lines.append("")
    lines.append(f"    def forward(self, {', '.join(params)}):")
    lines += [f"        {x}" for x in body]
    if gen.gaps:
        lines += ["", "", "# Known gaps of this export:"] + [f"# - {g}" for g in gen.gaps]
    lines += ["", ""]
    lines.append(loader.replace("__CLASS__", name).strip("\n"))
    source = "\n".join(lines) + "\n"
    return Generated(source, name, dict(gen.layers), dict(gen.raw), gen.state_keys(), list(gen.gaps))


def node_paths(gm: fx.GraphModule) -> Iterable[str]:
    for n in gm.graph.nodes:
        for path, _ in _stack(n):
            yield path
