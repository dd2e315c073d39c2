"""The Pareto front of a tune run as a PNG and as a self-contained HTML page."""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Mapping
from typing import Any

__all__ = ["write_pareto_png", "write_pareto_html"]

_LABEL = {"flops": "FLOPs (MACs) of the built subnet", "params": "parameters of the built subnet",
          "latency": "CPU latency of the built subnet, batch 1 (ms)"}


def _png_bytes(result: Mapping[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    objs = result["objectives"]
    cost = objs[1] if len(objs) > 1 else "flops"
    rows = [r for r in result["trials"] if r["state"] == "complete" and cost in r]
    front = set(result["front"])
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    others = [r for r in rows if r["trial"] not in front]
    best = sorted((r for r in rows if r["trial"] in front), key=lambda r: r[cost])
    ax.scatter([r[cost] for r in others], [r["accuracy"] for r in others], c="#9aa5b1", s=28,
               label="other trials")
    if best:
        ax.step([r[cost] for r in best], [r["accuracy"] for r in best], where="post", c="#d64545", lw=1.2)
        ax.scatter([r[cost] for r in best], [r["accuracy"] for r in best], c="#d64545", s=40,
                   label="Pareto front", zorder=3)
        for r in best:
            ax.annotate(str(r["trial"]), (r[cost], r["accuracy"]), textcoords="offset points", xytext=(4, 4),
                        fontsize=8)
    if cost in result.get("full", {}):
        ax.axvline(result["full"][cost], c="#486581", ls="--", lw=0.8, label="full model")
    ax.set_xlabel(_LABEL.get(cost, cost))
    ax.set_ylabel("validation accuracy of the subnet")
    c = result.get("counts", {})
    ax.set_title(f"otonas tune: {c.get('complete', 0)} complete, {c.get('pruned', 0)} pruned trials")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def write_pareto_png(path: str, result: Mapping[str, Any]) -> None:
    data = _png_bytes(result)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_pareto_html(path: str, result: Mapping[str, Any]) -> None:
    from ._run import format_front

    png = base64.b64encode(_png_bytes(result)).decode()
    objs = result["objectives"]
    keys = sorted({k for r in result["trials"] for k in r["budgets"]})
    front = set(result["front"])
    head = ["trial", "state", *keys, "accuracy", "FLOPs", "FLOPs %", "params",
            *(["latency ms"] if "latency" in objs else [])]
    body = []
    for r in sorted(result["trials"], key=lambda r: r["trial"]):
        cells = [str(r["trial"]), r["state"], *(f"{r['budgets'].get(k, 0):.3f}" for k in keys),
                 f"{r['accuracy']:.4f}" if "accuracy" in r else "",
                 f"{r['flops']:,}" if "flops" in r else "",
                 f"{100 * r['flops_ratio']:.1f}" if "flops_ratio" in r else "",
                 f"{r['params']:,}" if "params" in r else "",
                 *([f"{r.get('latency_ms', float('nan')):.3f}"] if "latency" in objs else [])]
        cls = ' class="front"' if r["trial"] in front else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>otonas tune: {html.escape(str(result.get('study', '')))}</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 2em; color: #1f2933; }}
table {{ border-collapse: collapse; }} td, th {{ padding: 2px 10px; text-align: right; border-bottom: 1px solid #e4e7eb; }}
tr.front td {{ background: #ffe3e3; font-weight: 600; }}
pre {{ background: #f5f7fa; padding: 1em; }}
</style></head><body>
<h1>otonas tune — study {html.escape(str(result.get('study', '')))}</h1>
<p>Objectives: {html.escape(', '.join(objs))}. Storage: {html.escape(str(result.get('storage', '')))}.
Full model: {result['full']['flops']:,} FLOPs, {result['full']['params']:,} parameters.
Rows in red are on the Pareto front; export one with <code>otonas tune ... --export-best TRIAL</code>.</p>
<img alt="Pareto front" src="data:image/png;base64,{png}">
<h2>Pareto front</h2>
<pre>{html.escape(format_front(result))}</pre>
<h2>All trials</h2>
<table><tr>{''.join(f'<th>{html.escape(h)}</th>' for h in head)}</tr>
{chr(10).join(body)}
</table></body></html>
"""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(page)
    os.replace(tmp, path)
