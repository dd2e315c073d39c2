"""Standalone HTML: the graph picture with pan and zoom, and the report page of a run.

Everything is inline (CSS, SVG, a few lines of JS): the files open offline, from disk,
and can be mailed or archived as they are.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from html import escape
from typing import Any

from .. import __version__
from ..analysis import Plan
from ._charts import Series, before_after_bars, channel_bars, human, line_chart, wants_log_scale
from ._facts import LayerChannels, layer_channels
from ._svg import FONT, draw_graph, family_colour

__all__ = ["render_graph_html", "write_report_html"]

_BLUE, _ORANGE, _GREEN, _PURPLE, _RED, _TEAL = "#2e7dd7", "#e8710a", "#2e9d5b", "#7e57c2", "#d93f3f", "#0f9d9a"

_CSS = """
*{box-sizing:border-box}
body{margin:0;background:#f4f5f7;color:#1f2933;font:14px/1.45 %(font)s}
.otn-viewer{background:#fff;border:1px solid #e1e4e8;border-radius:10px;overflow:hidden;display:flex;
 flex-direction:column}
.otn-tools{display:flex;gap:6px;align-items:center;padding:7px 10px;border-bottom:1px solid #eceef1;
 background:#fafbfc;font-size:12px;color:#67737f}
.otn-tools button{font:inherit;font-size:12px;padding:3px 10px;border:1px solid #cfd5dc;border-radius:6px;
 background:#fff;color:#1f2933;cursor:pointer}
.otn-tools button:hover{background:#eef2f7}
.otn-tools .hint{margin-left:auto}
.otn-stage{flex:1;min-height:0;cursor:grab;touch-action:none;background:#fff}
.otn-stage:active{cursor:grabbing}
.otn-stage svg{display:block;width:100%%;height:100%%;user-select:none}
.otn-node:hover rect{filter:brightness(0.96)}
.otn-legend-box{padding:4px 4px 0;border-bottom:1px solid #eceef1}
.otn-legend-box svg{display:block;max-width:100%%;height:auto}
"""

_REPORT_CSS = """
main{max-width:1180px;margin:0 auto;padding:28px 24px 48px}
header h1{font-size:24px;margin:0 0 4px;letter-spacing:-0.01em}
header .sub{color:#67737f;font-size:13px}
section{margin-top:26px}
h2{font-size:16px;margin:0 0 10px;color:#323f4b}
.panel{background:#fff;border:1px solid #e1e4e8;border-radius:10px;padding:16px 18px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(210px,1fr));gap:12px}
.card{background:#fff;border:1px solid #e1e4e8;border-radius:10px;padding:13px 16px 12px}
.card .label{font-size:11.5px;text-transform:uppercase;letter-spacing:.05em;color:#67737f;font-weight:600}
.card .value{font-size:26px;font-weight:700;margin-top:3px;letter-spacing:-0.01em}
.card .detail{font-size:12.5px;color:#52606d;margin-top:1px}
.good{color:#2e7d32}.bad{color:#b3261e}
.two{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:12px}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(540px,1fr));gap:12px}
.charts .panel{padding:8px 6px 2px}
.otn-chart{display:block;max-width:100%;height:auto}
table{border-collapse:collapse;width:100%;font-size:12.5px}
th{position:sticky;top:0;background:#f7f8fa;text-align:left;font-weight:600;color:#52606d;
 border-bottom:1px solid #e1e4e8;padding:6px 8px;z-index:1}
td{padding:4px 8px;border-bottom:1px solid #f0f2f4;vertical-align:middle}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.path{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,'DejaVu Sans Mono',monospace;font-size:12px;
 word-break:break-all}
tr.erased td{color:#9aa1a8}tr.erased td.path{text-decoration:line-through}
.bar{position:relative;height:8px;border-radius:4px;background:#f2c4c4;min-width:120px}
.bar span{position:absolute;left:0;top:0;bottom:0;border-radius:4px;background:#2e9d5b}
.scroll{max-height:460px;overflow:auto;border:1px solid #eceef1;border-radius:8px}
.swatch{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px;vertical-align:-1px}
.kv td:first-child{color:#52606d;white-space:nowrap;width:32%}
.kv td{font-variant-numeric:tabular-nums}
.muted{color:#67737f}
.graph .otn-stage{height:74vh;min-height:480px;flex:none}
ul.ops{columns:190px;column-gap:20px;margin:0;padding-left:18px;font-size:12.5px}
ul.ops li{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;break-inside:avoid;
 white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
footer{margin-top:32px;color:#8a96a3;font-size:12px;text-align:center}
.partial{background:#fff8e1;border-color:#f0c36d;color:#5f4400}
"""

# pan with drag or wheel, zoom with ctrl/⌘+wheel or the buttons; the viewBox keeps the stage's aspect
_JS = """
(function(){document.querySelectorAll('[data-otn-viewer]').forEach(function(v){
var stage=v.querySelector('.otn-stage'),svg=stage.querySelector('svg');if(!svg)return;
var W=+svg.getAttribute('width'),H=+svg.getAttribute('height'),vb=[0,0,W,H];
svg.removeAttribute('width');svg.removeAttribute('height');
function cw(){return stage.clientWidth||1}function ch(){return stage.clientHeight||1}
function apply(){svg.setAttribute('viewBox',vb.map(function(x){return x.toFixed(2)}).join(' '))}
function wide(){var s=Math.max(W/cw(),1);vb=[(W-cw()*s)/2,0,cw()*s,ch()*s];apply()}
function start(){var s=Math.min(Math.max(W/cw(),1),1.5),f=+svg.getAttribute('data-focus-x');
if(!(W/cw()>1.5)||!f)f=W/2;vb=[f-cw()*s/2,0,cw()*s,ch()*s];apply()}
function all(){var s=Math.max(W/cw(),H/ch());vb=[(W-cw()*s)/2,(H-ch()*s)/2,cw()*s,ch()*s];apply()}
function zoom(f,px,py){var s=vb[2]/cw(),x=vb[0]+px*s,y=vb[1]+py*s;vb[2]*=f;vb[3]*=f;s=vb[2]/cw();
vb[0]=x-px*s;vb[1]=y-py*s;apply()}
stage.addEventListener('wheel',function(e){e.preventDefault();var r=stage.getBoundingClientRect();
if(e.ctrlKey||e.metaKey){zoom(Math.exp(e.deltaY*0.0025),e.clientX-r.left,e.clientY-r.top)}
else{var s=vb[2]/cw();vb[0]+=(e.shiftKey?e.deltaY:e.deltaX)*s;vb[1]+=(e.shiftKey?0:e.deltaY)*s;apply()}},
{passive:false});
var drag=null;stage.addEventListener('pointerdown',function(e){drag=[e.clientX,e.clientY];
stage.setPointerCapture(e.pointerId)});
stage.addEventListener('pointermove',function(e){if(!drag)return;var s=vb[2]/cw();
vb[0]-=(e.clientX-drag[0])*s;vb[1]-=(e.clientY-drag[1])*s;drag=[e.clientX,e.clientY];apply()});
stage.addEventListener('pointerup',function(){drag=null});
stage.addEventListener('dblclick',function(e){var r=stage.getBoundingClientRect();
zoom(e.shiftKey?1.8:1/1.8,e.clientX-r.left,e.clientY-r.top)});
v.querySelectorAll('button[data-act]').forEach(function(b){b.addEventListener('click',function(){
var a=b.getAttribute('data-act');if(a==='in')zoom(1/1.4,cw()/2,ch()/2);else if(a==='out')zoom(1.4,cw()/2,ch()/2);
else if(a==='all')all();else if(a==='wide')wide();else start()})});
window.addEventListener('resize',function(){vb[3]=vb[2]*ch()/cw();apply()});start()})})();
"""


def _viewer(space: Any, *, removed: Any, erased: Any, max_nodes: int, title: str | None,
            legend_width: float, plan: Plan | None = None) -> str:
    """The legend, then the graph in a box that pans and zooms."""
    d = draw_graph(space, removed=removed, erased=erased, max_nodes=max_nodes, title=title,
                   legend_width=legend_width, plan=plan)
    return ('<div class="otn-viewer" data-otn-viewer>'
            f'<div class="otn-legend-box">{d.legend_svg()}</div><div class="otn-tools">'
            '<button data-act="in" title="zoom in">+</button><button data-act="out" title="zoom out">−</button>'
            '<button data-act="start">start</button><button data-act="wide">fit width</button>'
            '<button data-act="all">whole graph</button>'
            '<span class="hint">drag or scroll to move · ctrl/⌘ + scroll or double-click to zoom · '
            'hover a box for details</span>'
            f'</div><div class="otn-stage">{d.svg(legend=False)}</div></div>')


def render_graph_html(
    space: Any,
    *,
    removed: Any = None,
    erased: Any = None,
    max_nodes: int = 400,
    title: str | None = None,
    plan: Plan | None = None,
) -> str:
    """:func:`render_graph_svg` in a standalone HTML page with pan and zoom (inline CSS and JS)."""
    name = title or f"{type(space.model).__name__} — otonas graph"
    css = _CSS % {"font": FONT} + "html,body{height:100%}body{display:flex;flex-direction:column}" \
        ".otn-viewer{flex:1;margin:10px;min-height:0}"
    viewer = _viewer(space, removed=removed, erased=erased, max_nodes=max_nodes, title=title, legend_width=1200,
                     plan=plan)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(name)}</title><style>{css}</style></head>"
            f"<body>{viewer}<script>{_JS}</script></body></html>\n")


# --- the report page ----------------------------------------------------------------------
def _pct(v: float) -> str:
    return f"{v * 100:.1f} %" if abs(v) <= 1.0 else f"{v:.1f} %"


def _duration(seconds: float) -> str:
    s = float(seconds)
    if s < 60:
        return f"{s:.1f} s"
    m, s = divmod(int(round(s)), 60)
    if m < 60:
        return f"{m} min {s:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _card(label: str, value: str, detail: str = "", cls: str = "") -> str:
    return (f'<div class="card"><div class="label">{escape(label)}</div>'
            f'<div class="value {cls}">{escape(value)}</div>'
            + (f'<div class="detail">{detail}</div>' if detail else "") + "</div>")


def _cards(report: dict[str, Any], used: set[str], history: Sequence[dict[str, Any]] = ()) -> list[str]:
    cards = []
    full, sub = _num(report.get("accuracy_full")), _num(report.get("accuracy_subnet"))
    if sub is not None or full is not None:
        used |= {"accuracy_full", "accuracy_subnet"}
        main = sub if sub is not None else full
        assert main is not None
        detail = ""
        if sub is not None and full is not None:
            scale = 100.0 if max(abs(full), abs(sub)) <= 1.0 else 1.0
            delta = (sub - full) * scale
            detail = (f"full network {escape(_pct(full))} · "
                      f'<span class="{"good" if delta >= -0.05 else "bad"}">{delta:+.2f}&nbsp;pt</span>')
        cards.append(_card("accuracy (subnet)" if sub is not None else "accuracy", _pct(main), detail))
    for key, label in (("params", "parameters"), ("flops", "FLOPs (MACs / sample)")):
        before, after = _num(report.get(f"{key}_before")), _num(report.get(f"{key}_after"))
        if after is not None:
            used |= {f"{key}_before", f"{key}_after"}
            detail = ""
            if before:
                change = (after - before) / before
                detail = (f"from {escape(human(before))} · "
                          f'<span class="{"good" if change < 0 else "muted"}">{change:+.1%}</span>')
            cards.append(_card(label, human(after), detail))
    lat = report.get("latency")
    if isinstance(lat, dict) and _num(lat.get("subnet_seconds")) is not None:
        used |= {"latency", "latency_ms"}
        sub_s, dense_s = float(lat["subnet_seconds"]), _num(lat.get("dense_seconds"))
        where = (f"batch {lat.get('batch')} on {lat.get('device')}"
                 + (f", {lat.get('threads')} thread(s)" if str(lat.get("device", "")).startswith("cpu") else ""))
        detail = escape(where)
        if dense_s:
            change = (sub_s - dense_s) / dense_s
            detail = (f"from {dense_s * 1e3:.2f}&nbsp;ms · "
                      f'<span class="{"good" if change < 0 else "muted"}">{change:+.1%}</span> · {detail}')
        est = _num(lat.get("estimated_fraction"))
        if est is not None:
            target = _num(lat.get("target"))
            detail += (f" · estimated {est:.1%} of dense" + (f" (target {target:.0%})" if target is not None else ""))
        cards.append(_card("latency (measured)", f"{sub_s * 1e3:.2f} ms", detail))
    gs = _num(report.get("group_sparsity"))
    if gs is not None:
        # a channel group is one channel of a family: every layer it couples loses it together,
        # so it counts once however many layers it spans (the per-layer table counts channels)
        used.add("group_sparsity")
        n = _num(report.get("prunable_groups"))  # a number, or a string that reads as one
        k = _num(report.get("removed_groups"))
        if k is None and n:
            k = round(gs * n)
        detail = ""
        if n:
            used.add("prunable_groups")
            detail = (f"{int(k or 0):,} of {int(n):,} prunable channel groups" if k is not None else
                      f"of {int(n):,} prunable channel groups")
        if k is not None:
            used.add("removed_groups")
        cards.append(_card("channel groups removed", _pct(gs), detail))
    if "erased_operators" in report:
        used.add("erased_operators")
        ops = report["erased_operators"]
        count = len(ops) if isinstance(ops, (list, tuple)) else int(_num(ops) or 0)
        n = _num(report.get("erasing_groups"))
        if n is not None:
            used.add("erasing_groups")
        # a prune-only run erases nothing by design: an "erased 0 of N" card would only mislead
        if report.get("mode") != "prune" and (count or report.get("mode") in ("erase", "both")):
            cards.append(_card("operators erased", f"{count}",
                               f"of {int(n)} erasing groups" if n is not None else ""))
    diff = _num(report.get("max_abs_diff"))
    if diff is not None:
        used.add("max_abs_diff")
        ok = diff <= 1e-3
        cards.append(_card("max |full − subnet|", f"{diff:.2g}",
                           "outputs agree (float error)" if ok else "outputs differ: check the build",
                           "good" if ok else "bad"))
    epochs, seconds = _num(report.get("epochs")), _num(report.get("seconds"))
    if epochs is not None or seconds is not None:
        used |= {"epochs", "seconds"}
        value = f"{int(epochs)} epoch{'s' * (epochs != 1)}" if epochs is not None else _duration(seconds or 0)
        detail = escape(_duration(seconds)) if seconds is not None and epochs is not None else ""
        best = _best_epoch(history)
        if best is not None:
            detail += (" · " if detail else "") + escape(f"best val accuracy {_pct(best[1])} at epoch {best[0]:g}")
        cards.append(_card("training", value, detail))
    return cards


def _best_epoch(history: Sequence[dict[str, Any]]) -> tuple[float, float] | None:
    """(epoch, val accuracy) of the epoch with the highest validation accuracy (the first of ties)."""
    best: tuple[float, float] | None = None
    for i, h in enumerate(history):
        acc = _num(h.get("val_accuracy"))
        if acc is not None and (best is None or acc > best[1]):
            epoch = _num(h.get("epoch"))
            best = (epoch if epoch is not None else float(i + 1), acc)
    return best


def _flatten(d: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.extend(_flatten(v, key + "."))
        else:
            out.append((key, v))
    return out


def _value_text(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 10000:
        return f"{v:,}"
    if isinstance(v, (list, tuple)):
        text = ", ".join(str(x) for x in v[:12]) + (f", … ({len(v)} in all)" if len(v) > 12 else "")
        return f"[{text}]"
    return str(v)


def _history_charts(history: Sequence[dict[str, Any]]) -> list[str]:
    if not history:
        return []
    epochs = [_num(h.get("epoch")) for h in history]
    xs = [float(i + 1) if e is None else e for i, e in enumerate(epochs)]

    def col(key: str) -> list[float | None] | None:
        vals = [_num(h.get(key)) for h in history]
        return vals if any(v is not None for v in vals) else None

    charts = []
    best = _best_epoch(history)
    marker = (best[0], f"best val accuracy (epoch {best[0]:g})") if best is not None and len(history) > 1 else None
    loss, vloss = col("loss"), col("val_loss")
    if loss or vloss:
        series = [Series(n, v, c) for n, v, c in (("train loss", loss, _BLUE), ("val loss", vloss, _ORANGE)) if v]
        # one large first value would flatten the rest of a linear axis: then a log axis, said in the title
        log = wants_log_scale([v for s in series for v in s.values])
        charts.append(line_chart("Loss (log scale)" if log else "Loss", xs, series, y_format=lambda v: f"{v:.3g}",
                                 log_y=log, marker=marker))
    tr, va = col("train_accuracy"), col("val_accuracy")
    if tr or va:
        vals = [v for s in (tr or [], va or []) for v in s if v is not None]
        frac = bool(vals) and max(vals) <= 1.0
        fmt = (lambda v: f"{v * 100:.0f} %") if frac else (lambda v: f"{v:.3g} %")
        series = [Series(n, v, c) for n, v, c in (("train", tr, _BLUE), ("validation", va, _GREEN)) if v]
        charts.append(line_chart("Accuracy", xs, series, y_format=fmt, y_min=0.0, marker=marker))
    lr = col("lr")
    if lr:
        charts.append(line_chart("Learning rate (at each epoch's last step)", xs, [Series("learning rate", lr, _BLUE)],
                                 y_format=lambda v: f"{v:.3g}", y_min=0.0))
    gs = col("group_sparsity")
    if gs:
        charts.append(line_chart("Channel groups removed", xs, [Series("group sparsity", gs, _PURPLE)],
                                 y_format=lambda v: f"{v * 100:.0f} %", y_min=0.0))
    er = col("erased_ops")
    if er and any(v for v in er):
        charts.append(line_chart("Operators erased", xs, [Series("erased operators", er, _RED)],
                                 y_format=lambda v: f"{v:.0f}" if float(v).is_integer() else f"{v:.1f}", y_min=0.0))
    fl = col("flops")
    if fl:
        charts.append(line_chart("FLOPs (MACs / sample)", xs, [Series("FLOPs", fl, _TEAL)], y_min=0.0))
    pa = col("params")
    if pa:
        charts.append(line_chart("Parameters", xs, [Series("parameters", pa, _ORANGE)], y_min=0.0))
    return charts


def _layer_rows(report: dict[str, Any], space: Any, removed: Any, erased: Any,
                plan: Plan | None = None) -> list[LayerChannels] | None:
    given = report.get("layers")
    if isinstance(given, list) and given and all(isinstance(r, dict) for r in given):
        rows = []
        for r in given:
            before, after = _num(r.get("channels_before")), _num(r.get("channels_after"))
            name = r.get("layer", r.get("name"))
            if name is None or before is None or after is None:
                continue
            rows.append(LayerChannels(str(name), str(name), str(r.get("op", "")), int(before), int(after),
                                      bool(r.get("erased", False))))
        if rows:
            return rows
    if space is not None:
        return layer_channels(space, removed=removed, erased=erased, plan=plan)
    return None


def _layer_section(rows: list[LayerChannels]) -> str:
    colours = [family_colour(r.family)[1] if r.family is not None else _BLUE for r in rows]
    pruned = sum(1 for r in rows if not r.erased and r.channels_after < r.channels_before)
    erased = sum(1 for r in rows if r.erased)
    before = sum(r.channels_before for r in rows)
    after = sum(r.channels_after for r in rows)
    # output channels summed over the layers: a channel group that couples several layers counts
    # once per layer here, which is why this differs from the count of channel groups above
    summary = (f"{len(rows)} layers · {pruned} pruned" + (f" · {erased} erased" if erased else "")
               + f" · output channels summed over the layers {before:,} → {after:,}"
               f" ({(after / before if before else 1):.0%} kept)")
    body = []
    for i, (r, c) in enumerate(zip(rows, colours)):
        frac = r.kept_fraction if not r.erased else 0.0
        after_text = "erased" if r.erased else f"{r.channels_after}"
        body.append(f'<tr class="{"erased" if r.erased else ""}"><td class="num muted">{i + 1}</td>'
                    f'<td class="path"><span class="swatch" style="background:{c}"></span>{escape(r.layer)}</td>'
                    f'<td>{escape(r.op)}</td><td class="num">{r.channels_before}</td>'
                    f'<td class="num">{after_text}</td><td class="num">{frac:.0%}</td>'
                    f'<td><div class="bar"><span style="width:{frac * 100:.1f}%"></span></div></td></tr>')
    chart = channel_bars([(r.layer, r.channels_before, r.channels_after, r.erased) for r in rows], colours)
    return (f'<section><h2>Channels per layer</h2><div class="panel"><div class="muted" style="margin-bottom:8px">'
            f'{escape(summary)}</div>{chart}<div class="scroll" style="margin-top:10px"><table><thead><tr>'
            f'<th>#</th><th>layer</th><th>op</th><th style="text-align:right">output channels before</th>'
            f'<th style="text-align:right">after</th><th style="text-align:right">kept</th><th></th></tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div></div></section>')


def write_report_html(
    path: str | os.PathLike[str],
    *,
    report: dict[str, Any],
    history: Sequence[dict[str, Any]],
    space: Any = None,
    removed: Any = None,
    erased: Any = None,
    title: str | None = None,
    max_nodes: int = 200,
    partial: str | None = None,
    plan: Plan | None = None,
) -> None:
    """Write one self-contained HTML page about a run to ``path``.

    Shows the headline figures of ``report`` (accuracy, parameters, FLOPs, sparsity,
    erased operators, output difference, time; any other keys in a table), curves over
    ``history`` (one dict per epoch: loss, accuracies, group sparsity, erased ops, FLOPs;
    missing keys are skipped), parameters and FLOPs before and after, channels per layer
    (from ``report["layers"]`` when present, else from ``space`` and ``plan`` or ``removed``/``erased``),
    and the network graph with pruned and erased parts marked (when ``space`` is given;
    drawn one box per module above ``max_nodes`` ops, see :func:`render_graph_svg`).

    ``partial`` marks the page as the report of a run that did not finish: the sentence is shown
    in a banner at the top (and the title says "partial"); the figures are then those of the last
    finished epoch in ``history``.
    """
    report = dict(report or {})
    used: set[str] = {"layers"}
    model = report.get("model")
    heading = title or (f"otonas report — {model}" if model else "otonas report")
    if partial is not None:
        heading += " (partial)"
    sub = " · ".join(f"{k} {report[k]}" for k in ("data", "mode", "optimizer") if report.get(k) is not None)
    if model:
        used.add("model")
    parts = [f'<header><h1>{escape(heading)}</h1><div class="sub">{escape(sub)}</div></header>']
    if partial is not None:
        parts.append(f'<section><div class="panel partial" data-otonas-report="partial"><strong>Partial report.'
                     f'</strong> {escape(partial)}</div></section>')
    cards = _cards(report, used, history)
    if cards:
        parts.append(f'<section><div class="cards">{"".join(cards)}</div></section>')
    bars = [(label, _num(report.get(f"{k}_before")), _num(report.get(f"{k}_after")))
            for k, label in (("params", "parameters"), ("flops", "FLOPs"))]
    bar_rows = [(label, b, a) for label, b, a in bars if b is not None and a is not None]
    ops = report.get("erased_operators")
    side = ""
    if isinstance(ops, (list, tuple)) and ops:
        items = "".join(f"<li>{escape(str(o))}</li>" for o in ops[:300])
        more = f'<div class="muted">… and {len(ops) - 300} more</div>' if len(ops) > 300 else ""
        side = (f'<div class="panel"><h2>Erased operators ({len(ops)})</h2>'
                f'<div class="scroll" style="max-height:220px;border:0"><ul class="ops">{items}</ul></div>{more}</div>')
    if bar_rows:
        bars_svg = before_after_bars(bar_rows, width=540 if side else 1130)
        parts.append(f'<section class="{"two" if side else ""}"><div class="panel"><h2>Size before and after</h2>'
                     f'{bars_svg}</div>{side}</section>')
    elif side:
        parts.append(f"<section>{side}</section>")
    charts = _history_charts(history)
    if charts:
        parts.append('<section><h2>Training</h2><div class="charts">'
                     + "".join(f'<div class="panel">{c}</div>' for c in charts) + "</div></section>")
    rows = _layer_rows(report, space, removed, erased, plan)
    if rows:
        parts.append(_layer_section(rows))
    if space is not None:
        viewer = _viewer(space, removed=removed, erased=erased, max_nodes=max_nodes, legend_width=1130, plan=plan,
                         title=f"{type(space.model).__name__}" + (f" ({model})" if model else ""))
        parts.append(f'<section class="graph"><h2>Network</h2>{viewer}</section>')
    rest = [(k, v) for k, v in _flatten({k: v for k, v in report.items() if k not in used})]
    if rest:
        body = "".join(f"<tr><td>{escape(k)}</td><td>{escape(_value_text(v))}</td></tr>" for k, v in rest)
        parts.append(f'<section><h2>Run details</h2><div class="panel"><table class="kv">{body}</table></div>'
                     f"</section>")
    parts.append(f"<footer>written by otonas {escape(__version__)} · this page is self-contained and works "
                 f"offline</footer>")
    css = _CSS % {"font": FONT} + _REPORT_CSS
    status = '<meta name="otonas-report" content="partial">' if partial is not None else ""
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">{status}'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(heading)}</title><style>{css}</style></head><body><main>"
            + "\n".join(parts) + f"</main><script>{_JS}</script></body></html>\n")
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(page)
    os.replace(tmp, path)
