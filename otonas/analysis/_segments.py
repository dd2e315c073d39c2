"""Operator erasure: erasing groups, their hierarchy, and the validity of an erasure set.

An *erasing group* is the exclusive cone of one input of a join: every op whose only
path to the rest of the network goes through that input of an ``add`` (the term
disappears) or a ``cat`` (its channels disappear, and with them the consumers' input
columns). It is erasable when its output is exactly zero once all its parameters are
zero. Groups nest (a block of branches of candidate ops); pruning families minted
entirely inside a group are its children.

Validity is decided on the graph, never assumed: after removing a set of groups, a join
that lost every input dies, a ``mul`` or zero-preserving activation of a dead value
dies, and any other live op that reads a dead value makes the set invalid; every model
output must stay live; and a ``cat`` that drops a dead input may only drop channels that
nothing outside the dead part produces and that no pin guards.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any, TypeGuard

import networkx as nx
import numpy as np
from torch import fx
from torch.export.graph_signature import OutputKind

from ..ops import FlowResult, OpRule, module_path, module_stack, node_shape, rule_for

__all__ = ["ErasingGroup", "ErasureWalk", "Segments", "find_segments"]

@dataclass(frozen=True)
class ErasingGroup:
    """One removable operator (or nest of operators), found from the graph."""

    index: int
    module: str  # the deepest module path that holds all of it
    join: str  # the graph node of the add/cat it feeds
    join_kind: str  # "add" or "cat"
    output: str  # the graph node whose value it contributes
    nodes: frozenset[str]
    params: tuple[str, ...]  # parameter FQNs (whole tensors)
    parent: int | None  # the smallest erasing group that contains it
    depth: int


@dataclass(frozen=True)
class Skipped:
    """A join input that is not erasable, and why (reported by ``summary``)."""

    module: str
    join: str
    output: str
    reason: str


def _rule(node: fx.Node) -> OpRule:
    return rule_for(node.target)


def _is_tensor(a: Any) -> TypeGuard[fx.Node]:
    return isinstance(a, fx.Node) and node_shape(a.meta.get("val")) is not None


def _common_prefix(paths: list[str]) -> str:
    parts = [p.split(".") for p in paths if p]
    if not parts:
        return ""
    out = []
    for level in zip(*parts):
        if all(x == level[0] for x in level):
            out.append(level[0])
        else:
            break
    return ".".join(out)


class Segments:
    """The erasing groups of a graph and the machinery to check erasure sets."""

    def __init__(self, program: Any, flow: FlowResult, roots: np.ndarray, pinned_root: np.ndarray) -> None:
        self.graph: fx.Graph = program.graph
        self.flow = flow
        self.nodes = [n for n in self.graph.nodes]
        self.by_name = {n.name: n for n in self.nodes}
        self.param_nodes = flow.param_nodes
        self._roots = roots
        self._pinned_root = pinned_root
        sig = program.graph_signature
        out_node = next(n for n in self.nodes if n.op == "output")
        self.output_values = [a.name for a, s in zip(out_node.args[0], sig.output_specs)
                              if s.kind == OutputKind.USER_OUTPUT and isinstance(a, fx.Node)]
        self._minters: dict[int, set[str]] = {}
        for name, ids in flow.spaces:
            for r in np.unique(roots[ids]).tolist():
                self._minters.setdefault(r, set()).add(name)
        self.groups: list[ErasingGroup] = []
        self.skipped: list[Skipped] = []
        self._find()
        self._order = [n for n in self.nodes if n.op == "call_function"]
        self._inputs = {n.name: [a.name for a in n.all_input_nodes] for n in self._order}
        self._users = {n.name: [u.name for u in n.users] for n in self._order}
        self._walk_tables: _WalkTables | None = None

    # --- discovery ------------------------------------------------------------------
    def _leaves(self, join: fx.Node) -> list[fx.Node]:
        """Inputs of an add tree built inside one module (a mixed op's sum of candidates)."""
        path = module_path(join)
        out: list[fx.Node] = []
        for a in join.args[:2]:
            if not _is_tensor(a):
                continue
            if (a.op == "call_function" and _rule(a).join == "add" and len(a.users) == 1
                    and module_path(a) == path and all(_is_tensor(x) for x in a.args[:2])):
                out.extend(self._leaves(a))
            else:
                out.append(a)
        return out

    def _cone(self, start: fx.Node) -> set[str] | None:
        if len(start.users) != 1 or start.op != "call_function":
            return None
        cone = {start.name}
        work = [start]
        while work:
            n = work.pop()
            for p in n.all_input_nodes:
                if p.name in cone:
                    continue
                if p.op == "placeholder" and p.name not in self.param_nodes:
                    continue
                if p.op not in ("call_function", "placeholder"):
                    continue
                if all(u.name in cone for u in p.users):
                    cone.add(p.name)
                    work.append(p)
        return cone

    def _zero_when(self, node: Any, zero: set[str], memo: dict[str, bool]) -> bool:
        """Is ``node``'s value exactly zero when the placeholders in ``zero`` are?"""
        if not isinstance(node, fx.Node):
            return False
        if node.name in memo:
            return memo[node.name]
        memo[node.name] = False
        res = False
        if node.op == "placeholder":
            res = node.name in zero
        elif node.op == "call_function":
            r = _rule(node)
            tensors = [a for a in node.all_input_nodes if _is_tensor(a)]
            if r.zero_by_params(node, zero):
                res = True
            elif str(node.target) == "<built-in function getitem>":
                res = bool(node.args[1] == 0) and self._zero_when(node.args[0], zero, memo)
            elif r.zero_if == "any" and r.join is None:
                res = any(self._zero_when(a, zero, memo) for a in tensors)
            elif r.join is not None:
                scalars_ok = all(not isinstance(a, (int, float)) or a == 0 for a in node.args[1:2])
                res = bool(tensors) and scalars_ok and all(self._zero_when(a, zero, memo) for a in tensors)
            elif r.keeps_zero_tensor:
                res = bool(tensors) and self._zero_when(node.args[0], zero, memo)
        memo[node.name] = res
        return res

    def _find(self) -> None:
        found: list[tuple[fx.Node, str, fx.Node, set[str]]] = []
        for join in self.nodes:
            if join.op != "call_function":
                continue
            kind = _rule(join).join
            if kind == "add" and all(_is_tensor(a) for a in join.args[:2]):
                # the top of an add tree: not itself a leaf folded into a bigger sum
                users = list(join.users)
                if (len(users) == 1 and users[0].op == "call_function" and _rule(users[0]).join == "add"
                        and module_path(users[0]) == module_path(join)):
                    continue
                inputs = self._leaves(join)
            elif kind == "cat":
                inputs = [a for a in join.args[0] if _is_tensor(a)]
            else:
                continue
            for u in inputs:
                module = module_path(u)
                if sum(v is u for v in inputs) > 1:  # y + y, cat([y, y]): not one operator of the join
                    self.skipped.append(Skipped(module, join.name, u.name,
                                                "the join takes it more than once: not erasable on its own"))
                    continue
                cone = self._cone(u)
                if cone is None:
                    continue
                params = [n for n in cone if n in self.param_nodes]
                if not params:
                    self.skipped.append(Skipped(module, join.name, u.name,
                                                "parameter-free (identity, pooling): not erasable on its own"))
                    continue
                if not self._zero_when(u, set(params), {}):
                    self.skipped.append(Skipped(module, join.name, u.name,
                                                "its output is not zero when its parameters are"))
                    continue
                found.append((join, kind, u, cone))
        # nesting: parent = the smallest other group whose cone holds this group's output
        found.sort(key=lambda f: len(f[3]))
        containing: dict[str, list[int]] = {}
        for i, (_, _, _, cone) in enumerate(found):
            for n in cone:
                containing.setdefault(n, []).append(i)
        parents: list[int | None] = []
        for i, (_, _, u, cone) in enumerate(found):
            # (size, position) orders the groups strictly, so that nesting can never form a cycle
            cands = [j for j in containing.get(u.name, []) if (len(found[j][3]), j) > (len(cone), i)]
            parents.append(min(cands, key=lambda j: (len(found[j][3]), j)) if cands else None)
        depth = [0] * len(found)
        for i in range(len(found) - 1, -1, -1):  # a parent is always later in the list (ordered above)
            par = parents[i]
            depth[i] = 0 if par is None else depth[par] + 1
        for i, (join, kind, u, cone) in enumerate(found):
            self.groups.append(ErasingGroup(
                i, self._module_of(join, u, cone), join.name, kind, u.name, frozenset(cone),
                tuple(sorted(self.param_nodes[n] for n in cone if n in self.param_nodes)), parents[i], depth[i]))

    def _module_of(self, join: fx.Node, u: fx.Node, cone: set[str]) -> str:
        """The module the user wrote for this operator: the shallowest module below the
        join's own module that holds the whole cone (a candidate op, a mixed op)."""
        paths = [module_path(self.by_name[n]) for n in cone if self.by_name[n].op == "call_function"]
        common = _common_prefix(paths)
        outer = module_path(join)
        for path, _ in module_stack(u, all_entries=True):
            deeper = path != outer and (not outer or path.startswith(outer + "."))
            if deeper and (common == path or common.startswith(path + ".")):
                return path
        return common

    # --- validity -------------------------------------------------------------------
    def dead_nodes(self, erased: list[int] | set[int] | np.ndarray) -> tuple[set[str], str | None]:
        """Nodes that are gone (or exactly zero) after erasing these groups, and why the
        set is invalid (None when it is valid)."""
        idx = np.nonzero(erased)[0].tolist() if isinstance(erased, np.ndarray) and erased.dtype == bool \
            else list(erased)
        dead: set[str] = set()
        for i in idx:
            dead |= self.groups[int(i)].nodes
        for n in self._order:
            name = n.name
            if name in dead:
                continue
            ins = self._inputs[name]
            dead_in = [a for a in ins if a in dead]
            if not dead_in:
                continue
            r = _rule(n)
            tensors = [a.name for a in n.all_input_nodes if _is_tensor(a)]
            if r.join == "add" and len(tensors) == 2 or r.join == "cat":
                if all(a in dead for a in tensors):
                    dead.add(name)
                elif r.join == "add":
                    live = next(a for a in n.all_input_nodes if a.name not in dead)
                    if node_shape(live.meta.get("val")) != node_shape(n.meta.get("val")):
                        return dead, f"{name}: the term left after erasure ({live.name}) is broadcast to the sum"
                else:
                    why = self._cat_drop_ok(n, dead)
                    if why:
                        return dead, why
            elif r.zero_if == "any" or (r.keeps_zero_tensor and ins and ins[0] in dead and len(tensors) == 1):
                dead.add(name)
            elif str(n.target) == "<built-in function getitem>":
                dead.add(name)
            else:
                return dead, f"{name} ({n.target}) would read the erased value of {dead_in[0]}"
        for o in self.output_values:
            if o in dead:
                return dead, f"model output {o} would be erased"
        # whatever only erased operators read is unreachable now
        for n in reversed(self._order):
            users = self._users[n.name]
            if n.name not in dead and users and all(u in dead for u in users):
                dead.add(n.name)
        return dead, None

    def _cat_drop_ok(self, cat: fx.Node, dead: set[str]) -> str | None:
        inputs = cat.args[0]
        assert isinstance(inputs, (list, tuple))  # aten.cat's first argument is its list of inputs
        tensors = [a for a in inputs if _is_tensor(a)]
        dim: Any = cat.args[1] if len(cat.args) > 1 else cat.kwargs.get("dim", 0)
        d = int(dim)
        for a in tensors:
            if a.name not in dead:
                continue
            ids = self.flow.dims[a.name][d % len(self.flow.dims[a.name])]
            roots = np.unique(self._roots[ids])
            if self._pinned_root[roots].any():
                return f"{cat.name} cannot drop the channels of {a.name}: they are pinned"
            for r in roots.tolist():
                live = self._minters.get(r, set()) - dead
                if live:
                    return f"{cat.name} cannot drop the channels of {a.name}: {sorted(live)[0]} also produces them"
        return None

    def check(self, erased: Any) -> str | None:
        """None if erasing these groups leaves a valid, connected network, else why not."""
        return self.dead_nodes(erased)[1]

    def walk(self) -> ErasureWalk:
        """An empty erasure to grow one group at a time, each addition checked as :meth:`check`
        checks the grown set (same verdict, same reason) at the cost of the nodes it reaches."""
        if self._walk_tables is None:
            self._walk_tables = _WalkTables(self)
        return ErasureWalk(self._walk_tables)

    def removed_roots(self, dead: set[str]) -> np.ndarray:
        """Id roots of the channels that dead inputs of concatenations take away."""
        out: list[np.ndarray] = []
        for n in self._order:
            if _rule(n).join == "cat" and n.name not in dead:
                d = int(n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0))
                for a in n.args[0]:
                    if _is_tensor(a) and a.name in dead:
                        dims = self.flow.dims[a.name]
                        out.append(np.unique(self._roots[dims[d % len(dims)]]))
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    def hierarchy(self, families: Any) -> nx.DiGraph:
        """Tree: 'model' → erasing groups → nested groups; families minted inside a group hang under it."""
        tree = nx.DiGraph()
        tree.add_node("model", kind="model")
        for g in self.groups:
            tree.add_node(f"E{g.index}", kind="erasing", module=g.module, params=len(g.params))
        for g in self.groups:
            tree.add_edge("model" if g.parent is None else f"E{g.parent}", f"E{g.index}")
        containing: dict[str, list[int]] = {}
        for g in self.groups:
            for n in g.nodes:
                containing.setdefault(n, []).append(g.index)
        for fam in families:
            tree.add_node(f"F{fam.index}", kind="family", layers=fam.layers, prunable=len(fam.groups))
            owners = None
            for name in fam.minting_nodes:
                gs = set(containing.get(name, []))
                owners = gs if owners is None else owners & gs
            if owners:
                best = min(owners, key=lambda i: len(self.groups[i].nodes))
                tree.add_edge(f"E{best}", f"F{fam.index}")
            else:
                tree.add_edge("model", f"F{fam.index}")
        return tree


# how a live node with a dead input fares in the forward sweep of dead_nodes: a join dies when
# every tensor input is dead (else it checks what it drops); _ZERO and _GETITEM die; _KEEP dies
# when its first input is dead; anything else makes the erasure invalid
_JOIN, _ZERO, _KEEP, _GETITEM, _OTHER = range(5)


class _WalkTables:
    """What :meth:`Segments.dead_nodes` decides per node, read off the graph once: nodes are
    numbered in graph order (a topological order), so that the forward sweep from a few new
    dead nodes can visit only the nodes they reach, in the same order as the full sweep."""

    def __init__(self, seg: Segments) -> None:
        self.seg = seg
        self.names = [n.name for n in seg.nodes]
        self.id = {name: i for i, name in enumerate(self.names)}
        count = len(self.names)
        self.kind = [_OTHER] * count
        self.join: list[str | None] = [None] * count
        self.ins: list[list[int]] = [[] for _ in range(count)]
        self.tensors: list[list[int]] = [[] for _ in range(count)]
        self.same_shape: list[list[bool]] = [[] for _ in range(count)]  # per input: has the sum's shape
        self.users: list[list[int]] = [[] for _ in range(count)]
        for n in seg._order:
            i = self.id[n.name]
            r = _rule(n)
            ins = [self.id[a.name] for a in n.all_input_nodes]
            tensors = [self.id[a.name] for a in n.all_input_nodes if _is_tensor(a)]
            self.ins[i], self.tensors[i], self.join[i] = ins, tensors, r.join
            for a in set(ins):
                self.users[a].append(i)
            if r.join == "add" and len(tensors) == 2 or r.join == "cat":
                self.kind[i] = _JOIN
                shape = node_shape(n.meta.get("val"))
                self.same_shape[i] = [node_shape(a.meta.get("val")) == shape for a in n.all_input_nodes]
            elif r.zero_if == "any":
                self.kind[i] = _ZERO
            elif str(n.target) == "<built-in function getitem>":  # dead with any dead input, as _ZERO
                self.kind[i] = _GETITEM
            elif r.keeps_zero_tensor and len(tensors) == 1:
                self.kind[i] = _KEEP
        self.groups = [[self.id[name] for name in g.nodes] for g in seg.groups]
        self.outputs = [self.id[o] for o in seg.output_values]
        self._cat_inputs: dict[int, list[tuple[int, bool, list[int] | None]]] = {}

    def cat_inputs(self, i: int) -> list[tuple[int, bool, list[int] | None]]:
        """Per tensor input of the cat ``i``: its id, whether its channels are pinned, their roots."""
        out = self._cat_inputs.get(i)
        if out is None:
            seg = self.seg
            cat = seg.by_name[self.names[i]]
            inputs = cat.args[0]
            assert isinstance(inputs, (list, tuple))
            dim: Any = cat.args[1] if len(cat.args) > 1 else cat.kwargs.get("dim", 0)
            d = int(dim)
            out = []
            for a in inputs:
                if _is_tensor(a):
                    dims = seg.flow.dims.get(a.name)
                    if dims is None:  # as _cat_drop_ok, fail only if this input is ever dropped
                        out.append((self.id[a.name], False, None))
                        continue
                    roots = np.unique(seg._roots[dims[d % len(dims)]])
                    out.append((self.id[a.name], bool(seg._pinned_root[roots].any()), roots.tolist()))
            self._cat_inputs[i] = out
        return out


class ErasureWalk:
    """A valid erasure grown one group at a time (:meth:`Segments.walk`).

    ``check(g)`` says why erasing ``g`` with the groups accepted so far would be invalid (None
    when valid) — exactly what ``Segments.check`` says for the grown set — and ``accept(g)``
    adds it. The set accepted so far is valid, so a live node that passed the full sweep for it
    passes again unless one of its inputs died with ``g``: the check sweeps forward from
    ``g``'s new dead nodes only, in graph order, and stops at the first failure, which is the
    full sweep's first failure."""

    def __init__(self, tables: _WalkTables) -> None:
        self._t = tables
        self.accepted: list[int] = []
        self._dead: set[int] = set()  # the full forward sweep's dead nodes for the accepted set
        self._erased: set[int] = set()  # the nodes of the accepted groups themselves
        self._pending: tuple[int, set[int]] | None = None

    def check(self, g: int) -> str | None:
        t = self._t
        dead = self._dead
        own = t.groups[g]
        new = {i for i in own if i not in dead}
        own_set = set(own)
        heap = sorted({u for i in new for u in t.users[i]})
        seen = set(heap)

        def is_dead(i: int) -> bool:
            return i in dead or i in new

        while heap:
            n = heapq.heappop(heap)
            if is_dead(n):
                continue
            kind = t.kind[n]
            name = t.names[n]
            died = False
            if kind == _JOIN:
                if all(is_dead(a) for a in t.tensors[n]):
                    died = True
                elif t.join[n] == "add":
                    k = next(k for k, a in enumerate(t.ins[n]) if not is_dead(a))
                    if not t.same_shape[n][k]:
                        return f"{name}: the term left after erasure ({t.names[t.ins[n][k]]}) is broadcast to the sum"
                else:
                    why = self._cat_drop(n, new, own_set)
                    if why:
                        return why
            elif kind == _ZERO or kind == _KEEP and is_dead(t.ins[n][0]) or kind == _GETITEM:
                died = True
            else:
                first = next(a for a in t.ins[n] if is_dead(a))
                target = t.seg.by_name[name].target
                return f"{name} ({target}) would read the erased value of {t.names[first]}"
            if died:
                new.add(n)
                for u in t.users[n]:
                    if u not in seen:
                        seen.add(u)
                        heapq.heappush(heap, u)
        for o in t.outputs:
            if is_dead(o):
                return f"model output {t.names[o]} would be erased"
        self._pending = (g, new)
        return None

    def accept(self, g: int) -> None:
        """Add ``g`` (checked valid by :meth:`check` just before)."""
        if self._pending is None or self._pending[0] != g:
            if self.check(g) is not None:
                raise ValueError(f"erasing group {g} does not keep the erasure valid")
        assert self._pending is not None
        self._dead |= self._pending[1]
        self._erased.update(self._t.groups[g])
        self.accepted.append(g)
        self._pending = None

    def _cat_drop(self, cat: int, new: set[int], own: set[int]) -> str | None:
        """``Segments._cat_drop_ok`` on the dead set the full sweep holds when it reaches ``cat``:
        the erased groups' nodes, and the nodes it found dead before ``cat``."""
        t = self._t
        dead, erased = self._dead, self._erased
        name = t.names[cat]
        for a, pinned, roots in t.cat_inputs(cat):
            if a not in dead and a not in new:
                continue
            if roots is None:
                raise KeyError(t.names[a])
            if pinned:
                return f"{name} cannot drop the channels of {t.names[a]}: they are pinned"
            for r in roots:
                live = []
                for m in t.seg._minters.get(r, ()):
                    i = t.id.get(m)
                    gone = i is not None and (i in erased or i in own or i < cat and (i in dead or i in new))
                    if not gone:
                        live.append(m)
                if live:
                    return f"{name} cannot drop the channels of {t.names[a]}: {sorted(live)[0]} also produces them"
        return None


def find_segments(program: Any, flow: FlowResult, roots: np.ndarray, pinned_root: np.ndarray) -> Segments:
    return Segments(program, flow, roots, pinned_root)
