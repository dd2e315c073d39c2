"""The network as a picture: one self-contained SVG of the OpGraph, coloured by channel
family, with pruned channels, erased operators, erasing groups and pins marked."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass, field
from html import escape
from typing import Any

import networkx as nx
import numpy as np

from ..analysis import Plan
from ._facts import GraphFacts, OpFacts, graph_facts, short_op
from ._layout import Layout, layered_layout

__all__ = ["render_graph_svg", "draw_graph", "GraphDrawing", "family_colour", "FONT"]

FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', 'DejaVu Sans', Arial, sans-serif"
_INK = "#1f2933"
_MUTED = "#67737f"
_EDGE = "#8d98a5"
_DEAD = "#b7bcc2"
_PIN = "#d32f2f"
_GROUP = "#7e57c2"
_KEPT = "#2e9d5b"
_CUT = "#f2c4c4"
_CHAR = 0.6  # width of an average glyph, in font sizes (generous: DejaVu Sans is wide)
_CHAR_BOLD = 0.67


def family_colour(index: int | None) -> tuple[str, str]:
    """(fill, stroke) of a family: hues a golden angle apart, so neighbours differ."""
    if index is None:
        return "#ffffff", "#9aa3ad"
    hue = (index * 137.508 + 205.0) % 360.0
    return f"hsl({hue:.0f},70%,90%)", f"hsl({hue:.0f},42%,45%)"


def _text_width(text: str, size: float, *, bold: bool = False) -> float:
    return len(text) * size * (_CHAR_BOLD if bold else _CHAR)


def _clip_left(text: str, chars: int) -> str:
    return text if len(text) <= chars else "…" + text[-(chars - 1):]


def _fmt_shape(shape: tuple[int, ...] | None) -> str:
    return "×".join(str(s) for s in shape) if shape else "?"


# --- boxes: one per op, or one per module when the graph is big ---------------------------
@dataclass
class _Box:
    key: str
    ops: list[str]
    module: str
    collapsed: bool
    kind: str = "op"  # "op", "module", "input", "output"
    lines: tuple[str, str] = ("", "")
    chan: str = ""
    size: tuple[float, float] = (0.0, 0.0)
    family: int | None = None
    kept: float | None = None  # share of channels kept, when some were cut
    dead: int = 0
    pins: list[str] = field(default_factory=list)
    pinned_ops: int = 0
    groups: set[int] = field(default_factory=set)


def _depth(module: str) -> int:
    return len(module.split(".")) if module else 0


def _quotient(graph: nx.DiGraph, key: dict[str, str]) -> nx.DiGraph:
    q = nx.DiGraph()
    q.add_nodes_from(dict.fromkeys(key[n] for n in graph.nodes))
    for u, v in graph.edges:
        if key[u] != key[v]:
            q.add_edge(key[u], key[v])
    return q


def _split_cycles(graph: nx.DiGraph, key: dict[str, str], index: dict[str, int]) -> dict[str, str]:
    """Boxes must not form a cycle. A block whose own ops run between its children's
    (a cell summing its branches) has its own ops shown one by one, outermost block
    first; a module called twice with something between the calls gets a box per call;
    as a last resort every op of the boxes still in a cycle is shown by itself."""
    key = dict(key)
    split_done = False
    for _ in range(64):
        q = _quotient(graph, key)
        cyclic = [c for c in nx.strongly_connected_components(q) if len(c) > 1]
        if not cyclic:
            return key
        members: dict[str, list[str]] = {}
        for n in graph.nodes:
            members.setdefault(key[n], []).append(n)
        explode: set[str] = set()
        for comp in cyclic:
            own = [k for k in comp if k.startswith("own:")]
            if own:
                top = min(_depth(k[4:].split("#")[0]) for k in own)
                explode |= {k for k in own if _depth(k[4:].split("#")[0]) == top}
            elif not split_done:
                for k in comp:
                    parts = list(nx.weakly_connected_components(graph.subgraph(members[k])))
                    first = {p: min(index[x] for x in p) for p in map(frozenset, parts)}
                    for i, p in enumerate(sorted(first, key=first.__getitem__)):
                        for n in p:
                            key[n] = k if i == 0 else f"{k}#{i + 1}"
            else:
                explode |= set(comp)
        if not explode:
            split_done = True
        for k in explode:
            for n in members[k]:
                key[n] = f"op:{n}"
    return key


def _box_keys(graph: nx.DiGraph, facts: GraphFacts, max_nodes: int) -> tuple[dict[str, str], bool]:
    """Which box each op goes in: its own when the graph is small enough, otherwise its
    module cut at the deepest level that leaves at most ``max_nodes`` boxes (the ops a
    shallower module runs itself, like a block's residual add, share one box per module)."""
    names = list(graph.nodes)
    if len(names) <= max_nodes:
        return {n: f"op:{n}" for n in names}, False
    index = {n: i for i, n in enumerate(names)}
    deepest = max((_depth(facts.ops[n].module) for n in names), default=0)
    for depth in range(deepest, 0, -1):
        key = {}
        for n in names:
            m = facts.ops[n].module
            if _depth(m) >= depth:
                key[n] = "mod:" + ".".join(m.split(".")[:depth])
            else:
                key[n] = f"own:{m}" if m else f"op:{n}"
        key = _split_cycles(graph, key, index)
        if len(set(key.values())) <= max_nodes:
            return key, True
    # even the top-level modules are too many: runs of consecutive ops (acyclic by construction)
    per = math.ceil(len(names) / max(1, max_nodes))
    return {n: f"run:{i // per}" for i, n in enumerate(names)}, True


def _parent(path: str) -> str:
    return path.rsplit(".", 1)[0] if "." in path else ""


def _make_boxes(space: Any, facts: GraphFacts,
                max_nodes: int) -> tuple[dict[str, _Box], list[tuple[str, str]], bool, dict[Hashable, Hashable]]:
    graph = space.graph
    key, collapsed = _box_keys(graph, facts, max_nodes)
    boxes: dict[str, _Box] = {}
    for n in graph.nodes:
        k = key[n]
        if k not in boxes:
            module = k[4:].split("#")[0] if k[:4] in ("mod:", "own:") else facts.ops[n].module
            boxes[k] = _Box(k, [], module, False)
        boxes[k].ops.append(n)
    cluster: dict[Hashable, Hashable] = {}  # box -> the module it is kept beside (see layered_layout)
    for k, b in boxes.items():
        b.collapsed = len(b.ops) > 1
        cluster[k] = b.module if k.startswith("own:") else _parent(b.module)
    edges = list(dict.fromkeys((key[u], key[v]) for u, v in graph.edges if key[u] != key[v]))
    # the layout wants a topological order; a box's first op does not give one
    q = nx.DiGraph(edges)
    q.add_nodes_from(boxes)
    if nx.is_directed_acyclic_graph(q):
        first = {k: i for i, k in enumerate(boxes)}
        boxes = {k: boxes[k] for k in nx.lexicographical_topological_sort(q, key=first.__getitem__)}
    for b in boxes.values():
        _describe(space, b, [facts.ops[n] for n in b.ops])
    return boxes, edges, collapsed, cluster


def _module_type(space: Any, path: str) -> str:
    try:
        return type(space.model.get_submodule(path)).__name__ if path else type(space.model).__name__
    except Exception:  # a path the capture named but the module tree does not have
        return ""


def _describe(space: Any, box: _Box, ops: list[OpFacts]) -> None:
    box.dead = sum(f.dead for f in ops)
    box.pinned_ops = sum(bool(f.pins) for f in ops)
    box.pins = list(dict.fromkeys(f"{r} at {f.name}" for f in ops for r in f.pins))
    box.groups = {g for f in ops for g in f.erasing_groups}
    last = next((f for f in reversed(ops) if f.family is not None), None)
    box.family = last.family if last else None
    if not box.collapsed:
        f = ops[0]
        if f.op in ("input", "output"):
            box.kind = f.op
            box.lines = (f"{f.op} {f.name}" if f.op == "input" else "output", _fmt_shape(f.shape) if f.shape else "")
            box.family = None
        else:
            box.lines = (short_op(f.op), f.module or f.name)
        if f.channels:
            before, after = f.channels
            box.chan = f"{before}→{after}" if after != before else f"{before}"
            if after != before and not f.dead:
                box.kept = after / before if before else 1.0
        if box.kind in ("input", "output"):
            w = _text_width(box.lines[0], 12, bold=True) + _text_width(box.lines[1], 10.5) + 40
        else:
            w = max(_text_width(box.lines[0], 12, bold=True) + 12 + _text_width(box.chan, 11, bold=True) + 16,
                    _text_width(_clip_left(box.lines[1], 34), 10) + 18)
        box.size = (min(max(w, 96.0), 250.0), 30.0 if box.kind in ("input", "output") else 40.0)
        return
    box.kind = "module"
    layers = [f.channels for f in ops if f.layer and f.channels]
    out = next((f.channels for f in reversed(ops) if f.channels), None)
    if out is not None:
        before, after = out
        box.chan = f"{before}→{after}" if after != before else f"{before}"
    before_sum = sum(c[0] for c in layers)
    after_sum = sum(c[1] for c in layers)  # an erased layer's count is already 0
    if layers and after_sum != before_sum and box.dead < len(ops):
        box.kept = after_sum / before_sum if before_sum else 1.0
    kinds = Counter(short_op(f.op) for f in ops)
    what = f"{len(ops)} × {next(iter(kinds))}" if len(kinds) == 1 else f"{len(ops)} ops"
    if box.key.startswith("mod:"):
        kind = _module_type(space, box.module)
        what = f"{kind} · {what}" if kind else what
    elif box.key.startswith("own:"):
        what = f"{what} (own)"
    if box.dead and box.dead < len(ops):
        what += f" · {box.dead} erased"
    name = ".".join(box.module.split(".")[-3:]) if box.module else f"ops {ops[0].name}…"
    box.lines = (_clip_left(name, 22), what)
    w = max(_text_width(box.lines[0], 12, bold=True) + 12 + _text_width(box.chan, 11, bold=True) + 16,
            _text_width(box.lines[1], 10) + 18)
    box.size = (min(max(w, 100.0), 270.0), 44.0)


def _tooltip(space: Any, box: _Box, facts: GraphFacts) -> str:
    ops = [facts.ops[n] for n in box.ops]
    lines: list[str] = []
    if not box.collapsed:
        f = ops[0]
        lines.append(f"{f.name} — {f.op}")
        lines.append(f"module: {f.module or '(top level)'}")
        lines.append(f"shape: {_fmt_shape(f.shape)}")
        if f.family is not None:
            lines.append(f"family F{f.family}")
        if f.channels:
            lines.append(f"channels: {f.channels[0]} → {f.channels[1]}")
    else:
        lines.append(f"{box.module or '(ops)'} — {len(ops)} ops")
        kind = _module_type(space, box.module) if box.key.startswith("mod:") else ""
        if kind:
            lines.append(f"module type: {kind}")
        for f in [f for f in ops if f.layer][:12]:
            if f.channels:
                lines.append(f"  {f.module or f.name}: {short_op(f.op)} {f.channels[0]} → {f.channels[1]}")
        out = ops[-1]
        lines.append(f"output shape: {_fmt_shape(out.shape)}")
    if box.dead:
        lines.append(f"erased: {box.dead} of {len(ops)} op{'s' * (len(ops) != 1)}")
    if box.groups:
        gs = sorted(box.groups)
        lines.append("erasing group" + "s" * (len(gs) > 1) + ": " + ", ".join(
            f"E{g}" + (" (erased)" if facts.erased[g] else "") for g in gs[:8]) + (" …" if len(gs) > 8 else ""))
    for p in box.pins[:6]:
        lines.append(f"pinned: {p}")
    return "\n".join(lines)


# --- drawing ------------------------------------------------------------------------------
def _path(points: list[tuple[float, float]]) -> str:
    (x0, y0), rest = points[0], points[1:]
    d = [f"M{x0:.1f},{y0:.1f}"]
    for x1, y1 in rest:
        dy = (y1 - y0) * 0.5
        d.append(f"C{x0:.1f},{y0 + dy:.1f} {x1:.1f},{y1 - dy:.1f} {x1:.1f},{y1:.1f}")
        x0, y0 = x1, y1
    return " ".join(d)


def _ports(layout: Layout, edges: list[tuple[str, str]]) -> dict[tuple[str, str], list[tuple[float, float]]]:
    """Spread the ends of several edges over the width of a box, in the order they come from."""
    routes = {e: list(layout.edges[e]) for e in edges if e in layout.edges}
    ins: dict[Hashable, list[tuple[str, str]]] = {}
    outs: dict[Hashable, list[tuple[str, str]]] = {}
    for e in routes:
        outs.setdefault(e[0], []).append(e)
        ins.setdefault(e[1], []).append(e)
    for node, es in ins.items():
        if len(es) > 1:
            es.sort(key=lambda e: routes[e][-2][0])
            w = layout.size[node][0] * 0.6
            for i, e in enumerate(es):
                x = layout.pos[node][0] - w / 2 + w * (i + 0.5) / len(es)
                routes[e][-1] = (x, routes[e][-1][1])
    for node, es in outs.items():
        if len(es) > 1:
            es.sort(key=lambda e: routes[e][1][0])
            w = layout.size[node][0] * 0.6
            for i, e in enumerate(es):
                x = layout.pos[node][0] - w / 2 + w * (i + 0.5) / len(es)
                routes[e][0] = (x, routes[e][0][1])
    return routes


def _pin_icon(x: float, y: float) -> str:
    return (f'<g class="otn-pin-icon" transform="translate({x:.1f},{y:.1f}) rotate(30)">'
            f'<line x1="0" y1="2" x2="0" y2="11" stroke="{_PIN}" stroke-width="1.6" stroke-linecap="round"/>'
            f'<circle r="4.6" fill="{_PIN}" stroke="#fff" stroke-width="1"/>'
            f'<circle cx="-1.4" cy="-1.4" r="1.3" fill="#fff" opacity="0.8"/></g>')


def _draw_box(space: Any, box: _Box, layout: Layout, facts: GraphFacts) -> str:
    cx, cy = layout.pos[box.key]
    w, h = box.size
    x, y = cx - w / 2, cy - h / 2
    n_ops = len(box.ops)
    all_dead = box.dead == n_ops
    fill, stroke = family_colour(box.family)
    ink, muted = _INK, _MUTED
    classes = ["otn-node", f"otn-{box.kind}"]
    dash = ""
    stroke_w = 1.2
    if box.kind in ("input", "output"):
        fill, stroke, ink, muted = "#37474f", "#263238", "#ffffff", "#cfd8dc"
    if all_dead:
        classes.append("otn-erased")
        fill, stroke, ink, muted, dash = "#f1f2f4", _DEAD, "#9aa1a8", "#b0b6bc", ' stroke-dasharray="4 3"'
    elif box.dead:
        classes.append("otn-part-erased")
    if box.pinned_ops:
        classes.append("otn-pinned")
        stroke, stroke_w = _PIN, 2.0
    rx = h / 2 if box.kind in ("input", "output") else (4.0 if not box.collapsed else 7.0)
    out = [f'<g class="{" ".join(classes)}" data-box="{escape(box.key)}"'
           f' data-ops="{n_ops}" data-erased="{box.dead}" data-pinned="{box.pinned_ops}">',
           f"<title>{escape(_tooltip(space, box, facts))}</title>"]
    if box.collapsed and not all_dead:  # a stack: this box holds several ops
        out.append(f'<rect x="{x + 3:.1f}" y="{y + 3:.1f}" width="{w:.1f}" height="{h:.1f}" rx="{rx}" '
                   f'fill="{fill}" stroke="{stroke}" stroke-width="0.8" opacity="0.7"/>')
    out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" rx="{rx}" fill="{fill}" '
               f'stroke="{stroke}" stroke-width="{stroke_w}"{dash}/>')
    if all_dead:
        out.append(f'<path d="M{x + 6:.1f},{y + 5:.1f} L{x + w - 6:.1f},{y + h - 5:.1f} '
                   f'M{x + w - 6:.1f},{y + 5:.1f} L{x + 6:.1f},{y + h - 5:.1f}" stroke="#e3a3a3" '
                   f'stroke-width="1.3" fill="none"/>')
    elif box.dead:  # part of this module is erased: a grey corner says so
        out.append(f'<path d="M{x + w - 16:.1f},{y + h:.1f} L{x + w:.1f},{y + h - 16:.1f} '
                   f'L{x + w:.1f},{y + h - rx:.1f} Q{x + w:.1f},{y + h:.1f} {x + w - rx:.1f},{y + h:.1f} Z" '
                   f'fill="{_DEAD}"/>')
    if box.kind in ("input", "output"):
        out.append(f'<text x="{cx:.1f}" y="{cy + 4:.1f}" text-anchor="middle" font-size="12" fill="{ink}">'
                   f'<tspan font-weight="600">{escape(box.lines[0])}</tspan>'
                   f'<tspan fill="{muted}" font-size="10.5" dx="6">{escape(box.lines[1])}</tspan></text>')
    else:
        title_chars = 22 if box.collapsed else 24
        t1 = _clip_left(box.lines[0], title_chars)
        out.append(f'<text x="{x + 7:.1f}" y="{y + 16:.1f}" font-size="12" font-weight="600" fill="{ink}">'
                   f'{escape(t1)}</text>')
        if box.chan:
            cut = "→" in box.chan and not all_dead
            out.append(f'<text x="{x + w - 7:.1f}" y="{y + 16:.1f}" font-size="11" text-anchor="end" '
                       f'fill="{"#b3261e" if cut else muted}" font-weight="{600 if cut else 400}">'
                       f'{escape(box.chan)}</text>')
        t2 = box.lines[1] if box.collapsed else _clip_left(box.lines[1], 34)
        out.append(f'<text x="{x + 7:.1f}" y="{y + 30:.1f}" font-size="10" fill="{muted}">{escape(t2)}</text>')
        if box.kept is not None:
            bw = w - 14
            out.append(f'<rect x="{x + 7:.1f}" y="{y + h - 7:.1f}" width="{bw:.1f}" height="3.5" rx="1.5" '
                       f'fill="{_CUT}"/><rect x="{x + 7:.1f}" y="{y + h - 7:.1f}" width="{bw * box.kept:.1f}" '
                       f'height="3.5" rx="1.5" fill="{_KEPT}"/>')
    if box.pinned_ops:
        out.append(_pin_icon(x + w - 3, y - 2))
    out.append("</g>")
    return "".join(out)


def _group_outlines(space: Any, boxes: dict[str, _Box], layout: Layout, facts: GraphFacts,
                    box_of: dict[str, str]) -> tuple[list[str], list[str]]:
    """Dashed outlines around the erasing groups that are made of whole boxes (every group,
    when each op is its own box); a group that is exactly one box gets a tag on it instead.
    A group inside an erased group that is erased too is left to its parent's outline.
    Returns the outlines, and the labels and tags (drawn above the boxes)."""
    groups = space.erasing_groups
    drawn: dict[int, list[str]] = {}
    for g in groups:
        keys = list(dict.fromkeys(box_of[n] for n in g.nodes if n in box_of))
        if keys and all(set(boxes[k].ops) <= g.nodes for k in keys):
            drawn[g.index] = keys

    def moot(i: int) -> bool:
        p = groups[i].parent
        while p is not None:
            if p in drawn and facts.erased[p] and facts.erased[i]:
                return True
            p = groups[p].parent
        return False

    drawn = {i: k for i, k in drawn.items() if not moot(i)}
    tagged = {i for i, keys in drawn.items() if len(keys) == 1}
    height: dict[int, int] = {i: 0 for i in drawn}
    for i in sorted(drawn, key=lambda i: -groups[i].depth):
        p, h = groups[i].parent, height[i] + (0 if i in tagged else 1)
        while p is not None:
            if p in drawn:
                height[p] = max(height[p], h)
                h = height[p] + 1
            p = groups[p].parent
    rects, labels = [], []
    tags_on: dict[str, int] = {}
    for i in sorted(drawn, key=lambda i: groups[i].depth):
        keys = drawn[i]
        g = groups[i]
        erased = bool(facts.erased[i])
        colour = "#d66" if erased else _GROUP
        tip = (f"E{i}: erasing group {g.module or g.output} — {g.join_kind} into {g.join}, "
               f"{len(g.params)} parameter tensors" + (" — erased" if erased else ""))
        cls = "otn-group otn-group-erased" if erased else "otn-group"
        if i in tagged:
            k = keys[0]
            x = layout.pos[k][0] - boxes[k].size[0] / 2 + 6 + tags_on.get(k, 0)
            y = layout.pos[k][1] - boxes[k].size[1] / 2 - 6
            text = f"E{i}"
            w = _text_width(text, 9, bold=True) + 8
            tags_on[k] = tags_on.get(k, 0) + int(w) + 3
            labels.append(f'<g class="{cls} otn-group-tag" data-group="{i}"><title>{escape(tip)}</title>'
                          f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="12" rx="6" fill="{colour}"/>'
                          f'<text x="{x + w / 2:.1f}" y="{y + 9:.1f}" font-size="9" font-weight="700" '
                          f'text-anchor="middle" fill="#fff">{text}</text></g>')
            continue
        pad = 6.0 + 7.0 * height[i]
        x0 = min(layout.pos[k][0] - boxes[k].size[0] / 2 for k in keys) - pad
        x1 = max(layout.pos[k][0] + boxes[k].size[0] / 2 for k in keys) + pad + 3
        y0 = min(layout.pos[k][1] - boxes[k].size[1] / 2 for k in keys) - pad - 8
        y1 = max(layout.pos[k][1] + boxes[k].size[1] / 2 for k in keys) + pad + 3
        rects.append(f'<g class="{cls}" data-group="{i}"><title>{escape(tip)}</title>'
                     f'<rect x="{x0:.1f}" y="{y0:.1f}" width="{x1 - x0:.1f}" height="{y1 - y0:.1f}" rx="9" '
                     f'fill="{colour}" fill-opacity="{0.045 if erased else 0.03}" stroke="{colour}" '
                     f'stroke-width="1" stroke-dasharray="5 3"/></g>')
        labels.append(f'<text x="{x0 + 6:.1f}" y="{y0 + 10:.1f}" font-size="9.5" fill="{colour}" font-weight="700">'
                      f'E{i}{" erased" if erased else ""}</text>')
    return rects, labels


def _legend(space: Any, boxes: dict[str, _Box], facts: GraphFacts, width: float, collapsed: bool,
            title: str | None, pruned: int) -> tuple[list[str], float]:
    """``pruned``: the channel groups the removal mask names; ``facts.removed`` adds those that
    go with the erased inputs of a concat."""
    out: list[str] = []
    ops_total = len(facts.ops)
    removed = int(facts.removed.sum())
    erased_groups = int(facts.erased.sum())
    pinned_ops = sum(bool(f.pins) for f in facts.ops.values())
    name = title or type(space.model).__name__
    out.append(f'<text x="12" y="24" font-size="16" font-weight="700" fill="{_INK}">{escape(name)}</text>')
    stats = [f"{ops_total} ops" + (f" in {len(boxes)} boxes (one per module)" if collapsed else ""),
             f"{len(space.families)} channel families",
             f"{space.num_prunable_groups}/{space.num_groups} channel groups prunable",
             f"{space.num_erasing_groups} erasing groups",
             f"{pinned_ops} pinned op{'s' * (pinned_ops != 1)}"]
    out.append(f'<text x="12" y="42" font-size="11.5" fill="{_MUTED}">{escape(" · ".join(stats))}</text>')
    done = []
    if removed:
        done.append(f"{pruned} channel group{'s' * (pruned != 1)} pruned" + (
            f" (+{removed - pruned} with erased concat inputs)" if removed > pruned else ""))
    if erased_groups:
        done.append(f"{erased_groups} erasing group{'s' * (erased_groups != 1)} erased ({len(facts.dead)} ops)")
    y = 60.0
    if done:
        out.append(f'<text x="12" y="58" font-size="11.5" font-weight="600" fill="#b3261e">'
                   f'{escape(" · ".join(done))}</text>')
        y = 76.0
    # the key to the symbols
    x = 12.0
    keys: list[tuple[str, str, float]] = [
        (f'<rect x="0" y="-9" width="26" height="14" rx="3" fill="#fff" stroke="{_PIN}" stroke-width="2"/>'
         + _pin_icon(26, -9), "pinned op (hover: why)", 30),
        (f'<rect x="0" y="-9" width="26" height="14" rx="3" fill="#f1f2f4" stroke="{_DEAD}" stroke-dasharray="4 3"/>'
         f'<path d="M4,-6 L22,2 M22,-6 L4,2" stroke="#e3a3a3" stroke-width="1.2"/>', "erased", 26),
        (f'<rect x="0" y="-9" width="26" height="14" rx="5" fill="{_GROUP}" fill-opacity="0.05" stroke="{_GROUP}" '
         f'stroke-dasharray="5 3"/>', "erasing group", 26),
        (f'<rect x="0" y="-8" width="26" height="12" rx="6" fill="{_GROUP}"/>'
         f'<text x="13" y="1" font-size="9" font-weight="700" text-anchor="middle" fill="#fff">E7</text>',
         "a box that is one erasing group (red: erased)", 26),
        (f'<rect x="0" y="-3" width="26" height="4" rx="1.5" fill="{_CUT}"/>'
         f'<rect x="0" y="-3" width="16" height="4" rx="1.5" fill="{_KEPT}"/>', "channels kept", 26),
        (f'<text x="0" y="2" font-size="11" font-weight="600" fill="#b3261e">64→37</text>',
         "channels before→after", _text_width("64→37", 11, bold=True)),
    ]
    if collapsed:
        keys.append((f'<rect x="3" y="-6" width="23" height="12" rx="4" fill="#eef" stroke="#99a"/>'
                     f'<rect x="0" y="-9" width="23" height="12" rx="4" fill="#eef" stroke="#99a"/>',
                     "module (hover: its ops)", 26))
    for sym, label, sym_w in keys:
        wlabel = sym_w + 8 + len(label) * 11 * 0.55
        if x + wlabel > width - 12:
            x, y = 12.0, y + 20
        out.append(f'<g transform="translate({x:.1f},{y + 4:.1f})">{sym}'
                   f'<text x="{sym_w + 8:.0f}" y="3" font-size="11" fill="{_INK}">{escape(label)}</text></g>')
        x += wlabel + 22
    y += 24
    # the families that appear
    shown = sorted({b.family for b in boxes.values() if b.family is not None})
    if shown:
        out.append(f'<text x="12" y="{y + 4:.1f}" font-size="11" font-weight="600" fill="{_MUTED}">'
                   f'channel families (colour = the family whose channels an op produces)</text>')
        y += 14
        col_w = 240.0
        cols = max(1, int((width - 24) // col_w))
        limit = cols * 6
        for i, fi in enumerate(shown[:limit]):
            fam = space.families[fi]
            fill, stroke = family_colour(fi)
            cx = 12 + (i % cols) * col_w
            cy = y + (i // cols) * 17
            head = fam.layers[0] if fam.layers else "?"
            more = f" +{len(fam.layers) - 1}" if len(fam.layers) > 1 else ""
            lost = sum(bool(facts.removed[g]) for g in fam.groups)
            chan = f"{fam.num_channels}→{fam.num_channels - lost} ch" if lost else f"{fam.num_channels} ch"
            label = f"F{fi} {_clip_left(head, 22)}{more} · {chan}" + ("" if fam.prunable else " · pinned")
            tip = f"F{fi}: {fam.num_channels} channels, {len(fam.groups)} prunable\n" + "\n".join(fam.layers[:20]) + (
                "\n…" if len(fam.layers) > 20 else "")
            out.append(f'<g class="otn-family" data-family="{fi}"><title>{escape(tip)}</title>'
                       f'<rect x="{cx:.1f}" y="{cy - 5:.1f}" width="16" height="11" rx="2" fill="{fill}" '
                       f'stroke="{stroke}"/><text x="{cx + 22:.1f}" y="{cy + 4:.1f}" font-size="10.5" '
                       f'fill="{_INK}">{escape(label)}</text></g>')
        rows = (min(len(shown), limit) + cols - 1) // cols
        y += rows * 17
        if len(shown) > limit:
            out.append(f'<text x="12" y="{y + 4:.1f}" font-size="10.5" fill="{_MUTED}">… and {len(shown) - limit} '
                       f'more families (hover an op to see its family)</text>')
            y += 17
    return out, y + 10


def render_graph_svg(
    space: Any,
    *,
    removed: Any = None,
    erased: Any = None,
    max_nodes: int = 400,
    title: str | None = None,
    plan: Plan | None = None,
) -> str:
    """The network of ``space`` as one self-contained SVG document (a string).

    Ops are laid out top to bottom and coloured by the channel family they produce
    (a legend lists the families). ``removed`` (boolean mask over prunable groups) marks
    pruned channels: ``64→37`` on each op and a bar of the share kept. ``erased``
    (boolean mask over erasing groups) greys out and crosses every erased op. Erasing
    groups get dashed outlines labelled ``E<i>`` (or an ``E<i>`` tag on a box that is
    one group); ops whose channels are pinned get a red border and a pin; every box has
    a tooltip (op, module path, shape, why pinned). A graph of more than ``max_nodes``
    ops is drawn with one box per module, at the deepest module level that keeps the
    count at or under ``max_nodes``. ``plan`` (:meth:`SearchSpace.plan`) marks what it removes
    instead of ``removed`` and ``erased``.
    """
    d = draw_graph(space, removed=removed, erased=erased, max_nodes=max_nodes, title=title, plan=plan)
    return d.svg(legend=True)


@dataclass(frozen=True)
class GraphDrawing:
    """The pieces of a graph picture, so a page can show the legend apart from the graph."""

    legend: str  # SVG elements, laid out for ``legend_width``
    legend_height: float
    legend_width: float
    body: str  # SVG elements of the graph, origin at its top-left corner
    width: float
    height: float
    ops: int
    boxes: int
    collapsed: bool
    focus_x: float  # where the first input is: a viewer starts there

    def svg(self, *, legend: bool) -> str:
        """A whole SVG document: the graph, with the legend above it or without."""
        top = self.legend_height if legend else 0.0
        width = max(self.width, self.legend_width if legend else 0.0)
        height = top + self.height
        dx = (width - self.width) / 2
        parts = [
            f'<svg xmlns="http://www.w3.org/2000/svg" class="otn-graph" width="{width:.0f}" height="{height:.0f}" '
            f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="{escape(FONT)}" data-ops="{self.ops}" '
            f'data-boxes="{self.boxes}" data-collapsed="{str(self.collapsed).lower()}" '
            f'data-focus-x="{self.focus_x + dx:.0f}">',
            _DEFS,
            f'<rect width="{width:.0f}" height="{height:.0f}" fill="#ffffff"/>',
        ]
        if legend:
            parts += [self.legend,
                      f'<line x1="12" x2="{width - 12:.0f}" y1="{top - 4:.1f}" y2="{top - 4:.1f}" stroke="#e4e7eb"/>']
        parts += [f'<g transform="translate({dx:.1f},{top:.1f})">', self.body, "</g></svg>"]
        return "\n".join(parts)

    def legend_svg(self) -> str:
        """The legend alone, as an SVG document."""
        return (f'<svg xmlns="http://www.w3.org/2000/svg" class="otn-legend" width="{self.legend_width:.0f}" '
                f'height="{self.legend_height:.0f}" viewBox="0 0 {self.legend_width:.0f} {self.legend_height:.0f}" '
                f'font-family="{escape(FONT)}">{self.legend}</svg>')


_DEFS = ("<defs>"
         f'<marker id="otn-arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
         f'orient="auto-start-reverse"><path d="M0,1 L10,5 L0,9 z" fill="{_EDGE}"/></marker>'
         f'<marker id="otn-arrow-dead" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
         f'orient="auto-start-reverse"><path d="M0,1 L10,5 L0,9 z" fill="{_DEAD}"/></marker>'
         "</defs>")


def draw_graph(space: Any, *, removed: Any = None, erased: Any = None, max_nodes: int = 400,
               title: str | None = None, legend_width: float | None = None,
               plan: Plan | None = None) -> GraphDrawing:
    """Lay the graph out and draw its pieces (see :func:`render_graph_svg`)."""
    facts = graph_facts(space, removed=removed, erased=erased, plan=plan)
    if plan is not None:
        removed = plan.removed
    boxes, edges, collapsed, cluster = _make_boxes(space, facts, max(1, int(max_nodes)))
    order = list(boxes)
    layout = layered_layout(order, edges, {k: b.size for k, b in boxes.items()}, node_gap=20.0, layer_gap=30.0,
                            cluster=cluster, paths={k: b.module for k, b in boxes.items()})
    box_of = {n: k for k, b in boxes.items() for n in b.ops}
    rects, labels = _group_outlines(space, boxes, layout, facts, box_of)
    width = layout.width + 20
    lw = legend_width or min(max(width, 820.0), 1400.0)
    pruned = int(np.asarray(removed, dtype=bool).sum()) if removed is not None else 0
    legend, legend_height = _legend(space, boxes, facts, lw, collapsed, title, pruned)
    routes = _ports(layout, edges)
    edge_svg = []
    for (u, v), pts in routes.items():
        dead = boxes[u].dead == len(boxes[u].ops) or boxes[v].dead == len(boxes[v].ops)
        colour = _DEAD if dead else _EDGE
        extra = ' stroke-dasharray="4 3"' if dead else ""
        marker = "otn-arrow-dead" if dead else "otn-arrow"
        edge_svg.append(f'<path d="{_path(pts)}" fill="none" stroke="{colour}" stroke-width="1.1"{extra} '
                        f'marker-end="url(#{marker})"/>')
    node_svg = [_draw_box(space, boxes[k], layout, facts) for k in order]
    body = "\n".join([f'<g transform="translate(10,0)">',
                      '<g class="otn-groups">', *rects, "</g>",
                      '<g class="otn-edges">', *edge_svg, "</g>",
                      '<g class="otn-nodes">', *node_svg, "</g>",
                      '<g class="otn-group-labels">', *labels, "</g></g>"])
    focus = layout.pos[order[0]][0] + 10 if order else width / 2
    return GraphDrawing("\n".join(legend), legend_height, lw, body, width, layout.height + 10, len(facts.ops),
                        len(boxes), collapsed, focus)
