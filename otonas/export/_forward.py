"""The generated ``forward``: straight-line statements in graph order, expressions inlined
where the user's code had them on one line, names taken from the user's code."""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import fx, nn

from ..ops import ADD, ATOM, MUL, UNARY, Call, Expr, fn, is_identifier, literal, method, op_key, rule_for
from ..ops import torch_module_class
from ._graph import BLOCK_TYPES, FRAME, PLAIN, TORCH_DIR, ExportError, arg_values, flat_args, source_names
from ..ops import module_stack
from ._passes import is_random, mutated_arg
from ._tree import LINE, ModuleTree

__all__ = ["ForwardWriter", "RESERVED", "signature", "render_output"]

RESERVED = {"self", "F", "nn", "torch", "super", "float", "int", "len", "range", "getattr", "tuple", "list", "dict"}
_GENERIC = re.compile(r"^(x|h|y|out|hidden|input)_?\d*$")
_SYM_OPS = {"add", "sub", "mul", "floordiv", "neg", "truediv", "mod", "pow"}

Poly = dict[tuple[str, ...], int]


class ForwardWriter:
    """Writes ``forward`` in graph order. A value goes inside its only user when the user's code
    had both on one line, or for a short chain of one-input calls, within ``LINE`` columns;
    otherwise it gets a statement, named as the user's code named it."""

    def __init__(self, tree: ModuleTree) -> None:
        self.tree = tree
        self.nodes = tree.nodes
        self.pos = tree.pos
        self.names: dict[fx.Node, str] = {}
        self.holder: dict[str, fx.Node] = {}  # variable name -> node it holds now
        self.done: set[fx.Node] = set()
        self.lines: list[str] = []
        self.hint_cache: dict[tuple[str, bool], tuple[str, ...]] = {}
        self.current_block = ""
        self.block = {n: self._block(n) for n in self.nodes}
        self.type_count: dict[str, int] = {}
        for typ in tree.types.values():
            self.type_count[typ] = self.type_count.get(typ, 0) + 1
        self.key = {n: self._statement_key(n) for n in self.nodes}
        self.building: list[list[Any]] = []  # [node, deepest inlined argument] of expressions being written
        self.depth: dict[fx.Node, int] = {}
        self.block_inputs: dict[str, list[str]] = {}  # names a block read from outside, first first
        self.alias: tuple[str, str] | None = None  # (block path, local name) while inside a long-named block
        self._alias_holder = fx.Graph().placeholder("blk")  # keeps the alias name from being reused
        self.kind = {n: self._kind(n) for n in self.nodes}
        self.impure_pos = [self.pos[n] for n in self.nodes if self._impure(n)]
        self.inline = {n for n in self.nodes if self._inlinable(n)}

    # --- classification -------------------------------------------------------------------------
    def _block(self, n: fx.Node) -> str | None:
        stack = module_stack(n)
        if not stack:
            return None
        layers = self.tree.layers
        while stack:
            path, typ = stack[-1]
            cls = torch_module_class(typ)
            if path in layers or (cls is not None and cls not in BLOCK_TYPES):
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
        frames = [f"{file}:{line}" for file, line, _, _ in FRAME.findall(trace)]
        files = [file for file, _, _, _ in FRAME.findall(trace)]
        user = [i for i, f in enumerate(files) if not f.startswith(TORCH_DIR)]
        if not user:
            return tuple(frames)
        if self._in_torch_block(n):
            return tuple(frames)
        return tuple(frames[:user[-1] + 1])

    def _in_torch_block(self, n: fx.Node) -> bool:
        b = self.block.get(n)
        return bool(b) and torch_module_class(self.tree.types.get(b or "", "")) in BLOCK_TYPES

    def _kind(self, n: fx.Node) -> str:
        if n.op in ("placeholder", "get_attr", "output"):
            return n.op
        t = n.target
        if t is operator.getitem and isinstance(n.args[0], fx.Node) and self._unpacked(n.args[0]):
            return "item"
        if callable(t) and getattr(t, "__module__", None) in ("_operator", "operator") and t.__name__ in _SYM_OPS:
            return "sym"
        if rule_for(t).size_query:
            return "size"
        if n in self.tree.layer_nodes:
            return "layer"
        return "op"

    def _unpacked(self, n: fx.Node) -> bool:
        """A multi-output node whose parts are all taken by getitem: ``a, b = x.split(...)``
        when the number of parts is known, else ``parts = ...`` and ``parts[0]``."""
        if not n.users or not all(u.target is operator.getitem and isinstance(u.args[1], int) for u in n.users):
            return False
        count = self._count(n)
        return count is not None and max(cast(int, u.args[1]) for u in n.users) < count

    def _count(self, n: fx.Node) -> int | None:
        schema = getattr(n.target, "_schema", None)
        if schema is not None and len(schema.returns) > 1:
            return len(schema.returns)
        orig = self.tree.facts.original_node(n)
        val = orig.meta.get("val") if orig is not None else n.meta.get("val")
        return rule_for(n.target).num_outputs(n, val)

    def _impure(self, n: fx.Node) -> bool:
        if n.op != "call_function":
            return False
        return mutated_arg(n) is not None or is_random(n) or (not n.users and self.kind.get(n) != "sym")

    def _inlinable(self, n: fx.Node) -> bool:
        if self.kind[n] not in ("op", "layer") or self._impure(n) or len(n.users) != 1 or self._unpacked(n):
            return False
        (u,) = n.users
        if sum(1 for a in flat_args(u.args, u.kwargs) if a is n) != 1:
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
                assert isinstance(v.target, str)  # a get_attr node's target is the attribute path
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
            dev = self.tree.device_expr()
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
            return len(flat_args(n.args, {}))
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
        spec = self.tree.layer_nodes.get(n)
        if spec is not None:
            values, _ = arg_values(n, n.target)
            return Expr(f"{self.access(spec.path)}({render(values[spec.input]).text})")
        values, defaults = arg_values(n, n.target)
        call = Call(n, n.target, values, defaults, render, self.tree)
        e = None if self.tree.aten_fallback else rule_for(n.target).code(call)
        return e if e is not None else self._generic(call)

    def _generic(self, c: Call) -> Expr:
        t = c.target
        schema = getattr(t, "_schema", None)
        if schema is None:
            raise ExportError(f"node {c.node.name}: no way to write {t} as Python")
        namespace, _, name = schema.name.rpartition("::")
        if namespace and namespace not in ("aten", "prims"):
            return self._custom(c, namespace, name)
        public = getattr(torch, name, None)
        args, kw = [], []
        positional = True
        for a in schema.arguments:
            if a.name not in c.values:
                positional = positional and a.kwarg_only
                continue
            v = c.values[a.name]
            if a.name in ("layout", "pin_memory") or (a.name == "device" and not self.tree.device_expr()):
                continue
            text = c.render(v).text
            if positional and not a.kwarg_only:
                args.append(text)
            else:
                kw.append(f"{a.name}={text}")
        if mutated_arg(c.node) == 0 and not self.tree.aten_fallback and args and hasattr(torch.Tensor, name):
            return method(c.render(c.values[schema.arguments[0].name]), name, *args[1:], *kw)
        if public is not None and callable(public) and not name.startswith("_") and not self.tree.aten_fallback:
            return fn(f"torch.{name}", *args, *kw)
        self.tree.gap(f"{t} has no public PyTorch equivalent: written as torch.ops.aten.{name}.{t._overloadname}")
        return fn(f"torch.ops.aten.{name}.{t._overloadname}", *args, *kw)

    def _custom(self, c: Call, namespace: str, name: str) -> Expr:
        """A custom op (``torch.ops.<namespace>.<name>``), kept in its namespace; model.py imports
        the module that registers it, or export says which op cannot be registered there."""
        t = c.target
        module = _registering_module(t, namespace)
        if module is None:
            raise ExportError(
                f"node {c.node.name} calls the custom op {namespace}::{name}, and otonas cannot tell which importable "
                f"module registers it (defined in __main__ or a C++ extension of another name); define it with "
                f"torch.library in an importable module (or package named {namespace!r}), so that model.py can "
                "import it")
        self.tree.need_import(module)
        schema = t._schema
        args = [c.render(c.values[a.name]).text for a in schema.arguments if a.name in c.values and not a.kwarg_only]
        kw = [f"{a.name}={c.render(c.values[a.name]).text}" for a in schema.arguments
              if a.name in c.values and a.kwarg_only]
        return fn(f"torch.ops.{namespace}.{name}.{t._overloadname}", *args, *kw)

    def _sym(self, n: fx.Node, inlined: list[tuple[fx.Node, str]]) -> Expr:
        poly = self._poly(n)
        if poly is not None:
            return _render_poly(poly)
        values, defaults = arg_values(n, n.target)
        e = rule_for(n.target).code(Call(n, n.target, values, defaults, lambda v: self.render(v, inlined), self.tree))
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
        assert callable(v.target)  # a "sym" node calls an operator function (see _kind)
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
            for a in sorted({a for m in now for a in m.all_input_nodes if a in self.names}, key=lambda a: self.pos[a]):
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
        hints = source_names(n, self.hint_cache, inside_torch=self._in_torch_block(n))
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
        hints = source_names(n, self.hint_cache, inside_torch=self._in_torch_block(n))
        return hints[0] if len(hints) == 1 else None

    def _bind(self, n: fx.Node, name: str) -> None:
        self.names[n] = name
        self.holder[name] = n

    def _fresh(self, base: str, now: set[fx.Node]) -> str:
        base = base if is_identifier(base) and base not in RESERVED else "h"
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
        generic = [a for a in dying if a.op == "placeholder" or _GENERIC.match(self.names[a])]
        if generic:  # x = f(x); a meaningful name is not reused for another value
            return self.names[generic[0]]
        return self._fresh("h", now)

    def _hint(self, n: fx.Node) -> str | None:
        hints = source_names(n, self.hint_cache, inside_torch=self._in_torch_block(n))
        if self.kind[n] == "size" and hints:
            d = n.args[1] if len(n.args) > 1 else 0
            return hints[d] if isinstance(d, int) and 0 <= d < len(hints) and len(hints) > 1 else None
        return hints[0] if len(hints) == 1 else None

    def _size_name(self, n: fx.Node) -> str:
        d = n.args[1] if len(n.args) > 1 else None
        return "batch" if d == 0 and op_key(n.target).packet == "aten.sym_size" else "size"

    def _comment_block(self, n: fx.Node) -> str | None:
        """The outermost module around ``n`` of a class the network uses more than once
        (a ResNet BasicBlock, a ViT EncoderBlock): the unit a reader looks for."""
        for path, typ in module_stack(n):
            short = typ.rsplit(".", 1)[-1]
            leaf = torch_module_class(typ) is not None and short not in BLOCK_TYPES
            if (path and not leaf and not self._plain(path, short) and self.type_count.get(typ, 0) > 1
                    and self.tree.declares(path)):
                return path
        return None

    def _plain(self, path: str, short: str) -> bool:
        """A container without a forward of its own (nn.Sequential and its subclasses)."""
        if short in PLAIN:
            return True
        mod = self.tree.facts.module(path)
        return mod is not None and type(mod).forward in (nn.Sequential.forward, nn.Module.forward)

    def _comment(self, n: fx.Node) -> None:
        """``# layer1.0 (BasicBlock)`` where a block starts; a short local name for a block
        whose path is long (``block = self.trunk_output.block1["block1-0"]``)."""
        b = self._comment_block(n)
        if b is None or b == self.current_block:
            return
        self.current_block = b
        short = self.tree.types.get(b, "").rsplit(".", 1)[-1]
        self.lines.append(f"# {b}" + (f" ({short})" if short else ""))
        self.alias = None
        full = self.tree.access(b)
        if len(full) > 16:
            name = self._fresh("blk", set())
            self.lines.append(f"{name} = {full}")
            self._bind(self._alias_holder, name)
            self.alias = (b, name)

    def access(self, path: str) -> str:
        full = self.tree.access(path)
        if self.alias is not None:
            b, name = self.alias
            if path == b or path.startswith(b + "."):
                return name + full[len(self.tree.access(b)):]
        return full

    # --- the whole forward -----------------------------------------------------------------------
    def run(self, unpack: list[str], out: Callable[[Callable[[Any], Expr]], str]) -> list[str]:
        """The body of ``forward``: ``unpack`` (lines taking nested inputs apart), the statements,
        and ``return`` with the output structure ``out`` renders."""
        self.lines += unpack
        for n in self.nodes:
            k = self.kind[n]
            if n.op == "placeholder":
                name = n.name if is_identifier(n.name) and n.name not in RESERVED else n.name + "_"
                self._bind(n, name)
                self.done.add(n)
            elif k in ("get_attr", "sym", "item") or n in self.inline:
                continue
            elif n.op == "output":
                self.building.append([n, 0])
                while True:
                    inlined: list[tuple[fx.Node, str]] = []
                    text = out(lambda v: self.render(v, inlined))
                    if 8 + 7 + len(text) <= LINE or not inlined:
                        break
                    fits = [t for t in inlined if 8 + len(t[1]) + 12 <= LINE]
                    cut = max(fits, key=lambda t: len(t[1])) if fits else min(inlined, key=lambda t: len(t[1]))
                    self.statement(cut[0])
                self.lines.append("return " + text)
            else:
                self.statement(n)
        return self.lines


def _within(b: str | None, block: str) -> bool:
    if b is None:
        return True
    return b == block or b.startswith(block + ".")




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


def signature(gm: fx.GraphModule, placeholders: list[str], gaps: list[str]) -> tuple[list[str], list[str], Any]:
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


def render_output(spec: Any, leaves: list[Expr], gaps: list[str]) -> str:
    it = iter(leaves)

    def go(s: Any) -> str:
        if s is None or s.is_leaf():
            return next(it).text
        kids = [go(c) for c in _kids(s)]
        if s.type is list:
            return "[" + ", ".join(kids) + "]"
        if s.type is dict:
            return "{" + ", ".join(f"{literal(k).text}: {v}" for k, v in zip(s.context, kids)) + "}"
        if s.type is type(None):
            return "None"
        if s.type is not tuple:
            gaps.append(f"forward returned a {s.type.__name__}; model.py returns a plain tuple")
        return "(" + ", ".join(kids) + ("," if len(kids) == 1 else "") + ")"

    return go(spec)


def _registering_module(target: Any, namespace: str) -> str | None:
    """The importable module whose import registers the custom op ``target``: the module of its
    Python definition (``torch.library.custom_op``), else a package named like its namespace
    (``torchvision::nms``); None when neither is importable."""
    import importlib.util
    import sys

    qualname = target._schema.name
    try:
        from torch._library.custom_ops import OPDEFS

        opdef = OPDEFS.get(qualname)
    except ImportError:  # a torch without the custom_op registry
        opdef = None
    fn_ = getattr(opdef, "_init_fn", None) if opdef is not None else None
    module = getattr(fn_, "__module__", None)
    if module and module != "__main__" and module in sys.modules and getattr(sys.modules[module], "__file__", None):
        return str(module)
    root = namespace.split(".")[0]
    try:
        if importlib.util.find_spec(root) is not None:
            return root
    except (ImportError, ValueError):
        pass
    return None
