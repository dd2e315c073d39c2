"""Reports: the graph picture and the run page are well-formed, self-contained, and show
the numbers the SearchSpace gives (channels kept, erased ops, pins), for every tiny model,
a DARTS supernet with random erasures, and a big torchvision network drawn by module."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch

import otonas
import search_spaces
from otonas.testing import random_valid_erasure
from otonas.report import LayerChannels, layer_channels, render_graph_html, render_graph_svg, write_report_html
from otonas.report._layout import layered_layout
from tiny_models import CASES, inputs

SVG_NS = "{http://www.w3.org/2000/svg}"
_spaces: dict[str, otonas.SearchSpace] = {}


def _case(name: str) -> otonas.SearchSpace:
    if name not in _spaces:
        _, cls, shapes, dtype = next(c for c in CASES if c[0] == name)
        _spaces[name] = otonas.analyze(cls().eval(), inputs(shapes, dtype))
    return _spaces[name]


def _tiny(name: str) -> otonas.SearchSpace:
    if name not in _spaces:
        info = search_spaces.info(name)
        model = search_spaces.create(name, size="tiny").eval()
        x = torch.randn((2, *info.tiny_input_shape), generator=torch.Generator().manual_seed(0))
        _spaces[name] = otonas.analyze(model, (x,))
    return _spaces[name]


def _masks(space: otonas.SearchSpace, seed: int, erase: float = 0.5) -> tuple[np.ndarray, np.ndarray | None]:
    rng = np.random.default_rng(seed)
    removed = space.removable(rng.random(space.num_prunable_groups) < 0.4)
    erased = random_valid_erasure(space, erase, rng) if space.num_erasing_groups else None
    return removed, erased


def _dead(space: otonas.SearchSpace, erased: np.ndarray | None) -> set[str]:
    if erased is None or not erased.any():
        return set()
    dead, why = space.segments.dead_nodes(erased)
    assert why is None
    return dead


def _nodes(root: ET.Element) -> list[ET.Element]:
    return [g for g in root.iter(f"{SVG_NS}g") if "otn-node" in g.get("class", "").split()]


def _no_external_refs(text: str) -> None:
    refs = re.findall(r"https?://[^\s\"'<>)]*", text)
    assert set(refs) <= {"http://www.w3.org/2000/svg"}, sorted(set(refs))
    assert "<link" not in text and "@import" not in text and " src=" not in text


def _svgs_in(html: str) -> list[ET.Element]:
    return [ET.fromstring(m) for m in re.findall(r"<svg\b.*?</svg>", html, flags=re.S)]


def _check_picture(space: otonas.SearchSpace, removed: np.ndarray | None, erased: np.ndarray | None,
                   svg: str) -> ET.Element:
    _no_external_refs(svg)
    root = ET.fromstring(svg)  # well-formed XML
    assert root.tag == f"{SVG_NS}svg"
    nodes = _nodes(root)
    assert int(root.get("data-boxes")) == len(nodes)
    assert sum(int(g.get("data-ops")) for g in nodes) == space.graph.number_of_nodes() == int(root.get("data-ops"))
    dead = _dead(space, erased) & set(space.graph.nodes)
    assert sum(int(g.get("data-erased")) for g in nodes) == len(dead)
    pinned = {e.node for e in space.pins if e.node in space.graph}
    assert sum(int(g.get("data-pinned")) for g in nodes) == len(pinned)
    marked = [g for g in nodes if "otn-pinned" in g.get("class", "")]
    assert bool(marked) == bool(pinned)
    for g in nodes:  # every box says what it is
        title = g.find(f"{SVG_NS}title")
        assert title is not None and title.text
    return root


def _check_layers(space: otonas.SearchSpace, removed: np.ndarray, erased: np.ndarray | None,
                  rows: list[LayerChannels]) -> None:
    dead = _dead(space, erased)
    plan = space.plan(removed=removed, erased=erased)  # what the builder and costs() use
    assert plan.dead == frozenset(dead)
    removed_root = plan.removed_root
    assert rows and rows == list(plan.layers)
    for r in rows:
        shape = space.graph.nodes[r.node]["shape"]
        dim = 1 if "conv" in space.graph.nodes[r.node]["op"] else len(shape) - 1
        assert r.channels_before == shape[dim], r
        if r.node in dead:
            assert r.erased and r.channels_after == 0, r
        else:
            assert not r.erased
            assert r.channels_after == space.kept_sizes(r.node, removed_root)[dim], r


@pytest.mark.parametrize("name", [c[0] for c in CASES])
def test_graph_svg_for_every_tiny_model(name):
    space = _case(name)
    removed, erased = _masks(space, seed=1)
    svg = render_graph_svg(space, removed=removed, erased=erased)
    root = _check_picture(space, removed, erased, svg)
    assert root.get("data-collapsed") == "false"
    _check_layers(space, removed, erased, layer_channels(space, removed=removed, erased=erased))
    # also without masks, and drawn by module
    _check_picture(space, None, None, render_graph_svg(space))
    small = _check_picture(space, removed, erased, render_graph_svg(space, removed=removed, erased=erased,
                                                                     max_nodes=4))
    assert small.get("data-collapsed") == "true"


def test_erasing_groups_are_outlined_or_tagged():
    space = _case("residual")
    svg = render_graph_svg(space)
    root = ET.fromstring(svg)
    shown = {int(g.get("data-group")) for g in root.iter(f"{SVG_NS}g") if g.get("data-group") is not None}
    assert shown == set(range(space.num_erasing_groups))  # one box per op: every group can be drawn


def test_pruned_channels_are_labelled_on_the_ops():
    space = _tiny("resnet20")
    removed, _ = _masks(space, seed=0)
    rows = layer_channels(space, removed=removed)
    svg = render_graph_svg(space, removed=removed)
    texts = {t.text for t in ET.fromstring(svg).iter(f"{SVG_NS}text")}
    for r in rows:
        label = f"{r.channels_before}→{r.channels_after}" if r.channels_after != r.channels_before \
            else str(r.channels_before)
        assert label in texts
    _check_layers(space, removed, None, rows)


@pytest.mark.parametrize("seed", range(4))
def test_darts_with_random_erasure(seed):
    space = _tiny("darts")
    removed, erased = _masks(space, seed=seed, erase=0.3 + 0.1 * seed)
    assert erased is not None and erased.any()
    svg = render_graph_svg(space, removed=removed, erased=erased)
    root = _check_picture(space, removed, erased, svg)
    assert root.get("data-collapsed") == "true"  # 600-odd ops: one box per module
    assert int(root.get("data-boxes")) <= 400
    erased_boxes = [g for g in _nodes(root) if "otn-erased" in g.get("class", "").split()]
    assert erased_boxes and all(g.get("data-erased") == g.get("data-ops") for g in erased_boxes)
    _check_layers(space, removed, erased, layer_channels(space, removed=removed, erased=erased))
    # every op level too, when asked for
    if seed == 0:
        _check_picture(space, removed, erased, render_graph_svg(space, removed=removed, erased=erased,
                                                                max_nodes=10_000))


def test_big_graph_collapses_by_module():
    tv = pytest.importorskip("otonas._torchvision").import_torchvision()
    with torch.device("meta"):  # drawing needs shapes only
        model = tv.models.resnet50().eval()
    space = otonas.analyze(model, (torch.randn(2, 3, 224, 224, device="meta"),))
    n = space.graph.number_of_nodes()
    for max_nodes in (120, 60, 30):
        assert n > max_nodes
        root = _check_picture(space, None, None, render_graph_svg(space, max_nodes=max_nodes))
        assert root.get("data-collapsed") == "true"
        boxes = _nodes(root)
        assert 1 < len(boxes) <= max_nodes
        assert any(int(g.get("data-ops")) > 1 for g in boxes)
    full = ET.fromstring(render_graph_svg(space, max_nodes=n))
    assert full.get("data-collapsed") == "false" and len(_nodes(full)) == n


def test_graph_html_is_standalone():
    space = _tiny("resnet20")
    removed, _ = _masks(space, seed=0)
    html = render_graph_html(space, removed=removed, title="resnet20 <pruned>")
    assert html.startswith("<!DOCTYPE html>") and "</html>" in html
    assert "resnet20 &lt;pruned&gt;" in html
    _no_external_refs(html)
    svgs = _svgs_in(html)
    assert len(svgs) == 2  # the legend and the graph
    assert len(_nodes(svgs[1])) == space.graph.number_of_nodes()


def _history(epochs: int) -> list[dict]:
    rows = []
    for e in range(1, epochs + 1):
        rows.append({"epoch": e, "loss": 2.0 / e, "train_accuracy": 1 - 0.5 / e, "val_accuracy": 1 - 0.6 / e,
                     "group_sparsity": min(0.5, 0.1 * e), "erased_ops": min(3, e), "flops": 1000 - 50 * e})
    rows[1].pop("val_accuracy")  # a missing value is skipped, not drawn as zero
    return rows


def test_report_page(tmp_path):
    space = _tiny("darts")
    removed, erased = _masks(space, seed=3)
    before, after = space.costs(), space.costs(removed, erased)
    erased_names = [space.erasing_groups[i].module for i in np.nonzero(erased)[0]]
    report = {"model": "darts", "data": "cifar10", "mode": "both", "accuracy_full": 0.9123,
              "accuracy_subnet": 0.9087, "params_before": before.params, "params_after": after.params,
              "flops_before": before.flops, "flops_after": after.flops, "group_sparsity": float(removed.mean()),
              "erased_operators": erased_names, "max_abs_diff": 2.5e-6, "epochs": 8, "seconds": 3725.0,
              "seed": 7, "config": {"lr": 0.05, "note": "<b>not html</b>"}}
    path = tmp_path / "report.html"
    write_report_html(path, report=report, history=_history(8), space=space, removed=removed, erased=erased,
                      title="darts & friends")
    html = path.read_text(encoding="utf-8")
    _no_external_refs(html)
    assert "darts &amp; friends" in html and "&lt;b&gt;not html&lt;/b&gt;" in html
    for text in ("91.2 %", "90.9 %", f"{len(erased_names)}", "1 h 02 min", "config.lr", "0.05"):
        assert text in html, text
    # the loss falls from 2.0 to 0.25: 8x, so a log axis (said in the title)
    for title in ("Loss (log scale)", "Accuracy", "Channel groups removed", "Operators erased",
                  "FLOPs (MACs / sample)"):
        assert f">{title}</text>" in html, title
    svgs = _svgs_in(html)  # every chart and the graph parse as XML
    graph = [s for s in svgs if "otn-graph" in s.get("class", "")]
    assert len(graph) == 1
    _check_picture(space, removed, erased, ET.tostring(graph[0], encoding="unicode"))
    # the per-layer table lists what layer_channels gives
    rows = layer_channels(space, removed=removed, erased=erased)
    body = re.search(r"<tbody>(.*?)</tbody>", html, flags=re.S).group(1)
    cells = re.findall(r'<td class="path">.*?</span>(.*?)</td><td>.*?</td><td class="num">(\d+)</td>'
                       r'<td class="num">(\w+)</td>', body)
    assert len(cells) == len(rows)
    for (layer, b, a), r in zip(cells, rows):
        assert layer == r.layer and int(b) == r.channels_before
        assert a == ("erased" if r.erased else str(r.channels_after))


def test_report_page_without_space_and_with_given_layers(tmp_path):
    report = {"accuracy_full": 91.5, "accuracy_subnet": 91.0, "params_before": 1000, "params_after": 400,
              "erased_operators": 0, "layers": [{"layer": "conv1", "channels_before": 64, "channels_after": 37},
                                                {"layer": "fc", "channels_before": 10, "channels_after": 10}]}
    history = [{"epoch": 1, "loss": 1.0}, {"epoch": 2, "loss": math.nan}, {"epoch": 3}]
    path = tmp_path / "r.html"
    write_report_html(path, report=report, history=history)
    html = path.read_text(encoding="utf-8")
    _no_external_refs(html)
    assert 'class="otn-graph"' not in html and "91.0 %" in html and "conv1" in html and ">37<" in html
    assert ">Accuracy</text>" not in html and ">Loss</text>" in html
    for svg in _svgs_in(html):
        assert svg.tag == f"{SVG_NS}svg"
    write_report_html(tmp_path / "empty.html", report={}, history=[])
    assert "</html>" in (tmp_path / "empty.html").read_text(encoding="utf-8")


def test_masks_of_the_wrong_size_are_refused():
    space = _case("conv_chain")
    with pytest.raises(otonas.OtonasError, match="shape"):
        render_graph_svg(space, removed=np.zeros(space.num_prunable_groups + 1, dtype=bool))


def test_layout_is_layered_and_does_not_overlap():
    nodes = list("abcdfehg")  # a topological order of the edges but the last
    edges = [("a", "b"), ("b", "c"), ("c", "d"), ("a", "d"), ("d", "e"), ("a", "f"), ("f", "e"), ("e", "g"),
             ("h", "g"), ("g", "b")]  # g -> b closes a cycle: drawn anyway
    sizes = {n: (60.0 + 10 * i, 30.0) for i, n in enumerate(nodes)}
    lay = layered_layout(nodes, edges, sizes)
    for u, v in edges[:-1]:
        assert lay.layer[u] < lay.layer[v]
        pts = lay.edges[(u, v)]
        assert pts[0][1] < pts[-1][1]  # drawn downwards
    by_layer: dict[int, list[str]] = {}
    for n in nodes:
        by_layer.setdefault(lay.layer[n], []).append(n)
    for row in by_layer.values():
        row.sort(key=lambda n: lay.pos[n][0])
        for a, b in zip(row, row[1:]):
            assert lay.pos[a][0] + sizes[a][0] / 2 <= lay.pos[b][0] - sizes[b][0] / 2
    assert 0 <= min(p[0] - sizes[n][0] / 2 for n, p in lay.pos.items())
    assert max(p[0] + sizes[n][0] / 2 for n, p in lay.pos.items()) <= lay.width


def test_layout_keeps_a_chain_straight_beside_a_skip_edge():
    nodes = ["in", "conv", "bn", "relu", "add", "out"]
    edges = [("in", "conv"), ("conv", "bn"), ("bn", "relu"), ("relu", "add"), ("in", "add"), ("add", "out")]
    sizes = {"in": (80.0, 30.0), "conv": (90.0, 40.0), "bn": (130.0, 40.0), "relu": (70.0, 40.0),
             "add": (80.0, 40.0), "out": (80.0, 30.0)}
    lay = layered_layout(nodes, edges, sizes)
    xs = {round(lay.pos[n][0], 6) for n in nodes}
    assert len(xs) == 1
    skip = lay.edges[("in", "add")]
    assert len(skip) > 2 and all(x > lay.pos["bn"][0] + 65 for x, _ in skip[1:-1])  # routed beside the boxes



# --- the report's figures agree with report.json and architecture.json --------------------------

def _card_texts(html: str) -> dict[str, tuple[str, str]]:
    """label -> (value, detail text) of every card of a report page."""
    cards = re.findall(r'<div class="card"><div class="label">(.*?)</div><div class="value[^"]*">(.*?)</div>'
                       r'(?:<div class="detail">(.*?)</div>)?</div>', html)
    return {label: (value, re.sub(r"<[^>]+>", "", detail).replace("&nbsp;", " ")) for label, value, detail in cards}


def _chart(html: str, title: str) -> ET.Element:
    return next(s for s in _svgs_in(html) if any(t.text == title for t in s.iter(f"{SVG_NS}text")))


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A finished 3-epoch prune search on the tiny ResNet-20 (digits): its folder and report.json."""
    import json

    from otonas.search import SearchConfig, search

    out = tmp_path_factory.mktemp("report") / "run"
    search(SearchConfig(out=str(out), model="search_spaces:resnet20", model_kwargs={"size": "tiny"}, mode="prune",
                        batch_size=256, epochs=3, progress=False))
    return out, json.loads((out / "report.json").read_text()), json.loads((out / "architecture.json").read_text())


def test_run_report_cards_match_report_json(run_folder):
    out, report, _ = run_folder
    html = (out / "report.html").read_text(encoding="utf-8")
    cards = _card_texts(html)
    assert report["removed_groups"] == round(report["group_sparsity"] * report["prunable_groups"]) > 0
    value, detail = cards["channel groups removed"]
    assert value == f"{report['group_sparsity'] * 100:.1f} %"
    assert detail == f"{report['removed_groups']:,} of {report['prunable_groups']:,} prunable channel groups"
    assert "operators erased" not in cards  # a prune-only run: no erasure card
    assert cards["accuracy (subnet)"][0] == f"{report['accuracy_subnet'] * 100:.1f} %"
    from otonas.report._charts import human

    assert cards["parameters"][0] == human(report["params_after"])
    assert cards["FLOPs (MACs / sample)"][0] == human(report["flops_after"])
    assert "prunable channels" not in html and "channels prunable" not in html  # groups are named groups


def test_run_report_graph_header_counts_groups_as_report_json(run_folder):
    out, report, _ = run_folder
    html = (out / "report.html").read_text(encoding="utf-8")
    legend = next(s for s in _svgs_in(html) if any("channel families" in (t.text or "") for t in s.iter(f"{SVG_NS}text")))
    texts = [t.text or "" for t in legend.iter(f"{SVG_NS}text")]
    stats = next(t for t in texts if "channel groups prunable" in t)
    assert re.search(rf"\b{report['prunable_groups']}/\d+ channel groups prunable", stats), stats
    assert f"{report['removed_groups']} channel groups pruned" in texts


def test_run_report_layer_table_matches_architecture_json(run_folder):
    out, _, arch = run_folder
    html = (out / "report.html").read_text(encoding="utf-8")
    layers = {entry["name"]: entry for entry in arch["layers"]}
    body = re.search(r"<tbody>(.*?)</tbody>", html, flags=re.S).group(1)
    cells = re.findall(r'<td class="path">.*?</span>(.*?)</td><td>(.*?)</td><td class="num">(\d+)</td>'
                       r'<td class="num">(\w+)</td>', body)
    assert cells
    total_before = total_after = 0
    for layer, op, before, after in cells:
        out_channels = layers[layer]["channels"]["out"]  # the layer's output channels, as model.py declares them
        assert (int(before), int(after)) == (out_channels["before"], out_channels["after"]), layer
        total_before, total_after = total_before + int(before), total_after + int(after)
    summary = re.search(r"output channels summed over the layers ([\d,]+) → ([\d,]+)", html)
    assert summary and (int(summary[1].replace(",", "")), int(summary[2].replace(",", ""))) == (total_before,
                                                                                                total_after)
    # the size before and after: the same totals as architecture.json's
    _, report, _ = run_folder
    assert (report["params_before"], report["params_after"]) == (arch["params"]["before"], arch["params"]["after"])
    assert (report["flops_before"], report["flops_after"]) == (arch["flops"]["before"], arch["flops"]["after"])


def test_run_report_has_the_lr_curve_and_the_best_epoch(run_folder):
    import json

    out, _, _ = run_folder
    html = (out / "report.html").read_text(encoding="utf-8")
    history = json.loads((out / "checkpoint" / "run.json").read_text())["history"]
    lr_chart = _chart(html, "Learning rate (at each epoch's last step)")
    tips = [c.find(f"{SVG_NS}title").text for c in lr_chart.iter(f"{SVG_NS}circle")]
    assert tips == [f"learning rate, epoch {h['epoch']}: {h['lr']:.3g}" for h in history]
    best = max(range(len(history)), key=lambda i: (history[i]["val_accuracy"], -i))
    epoch = history[best]["epoch"]
    acc = _chart(html, "Accuracy")
    marker = next(g for g in acc.iter(f"{SVG_NS}g") if g.get("class") == "otn-marker")
    assert marker.find(f"{SVG_NS}text").text == f"best val accuracy (epoch {epoch})"
    point = next(c for c in acc.iter(f"{SVG_NS}circle")
                 if c.find(f"{SVG_NS}title").text.startswith(f"validation, epoch {epoch}:"))
    assert marker.find(f"{SVG_NS}line").get("x1") == point.get("cx")
    assert f"at epoch {epoch}" in _card_texts(html)["training"][1]


def test_loss_chart_is_log_scale_when_one_value_dwarfs_the_rest(tmp_path):
    from otonas.report._charts import Series, line_chart

    big_first = [{"epoch": e, "loss": v} for e, v in enumerate([9.0, 0.50, 0.45, 0.42, 0.40], 1)]
    flat = [{"epoch": e, "loss": v} for e, v in enumerate([0.9, 0.7, 0.6, 0.55], 1)]
    write_report_html(tmp_path / "a.html", report={}, history=big_first)
    write_report_html(tmp_path / "b.html", report={}, history=flat)
    assert ">Loss (log scale)</text>" in (tmp_path / "a.html").read_text()
    assert ">Loss</text>" in (tmp_path / "b.html").read_text()

    def spread(svg: str) -> float:  # the vertical extent of the last four points, in pixels
        ys = [float(y) for y in re.findall(r'<circle cx="[\d.]+" cy="([\d.]+)"', svg)][1:]
        return max(ys) - min(ys)

    xs = [1.0, 2.0, 3.0, 4.0, 5.0]
    values = [v["loss"] for v in big_first]
    log, linear = (line_chart("L", xs, [Series("loss", values, "#000")], log_y=flag) for flag in (True, False))
    assert spread(log) > 3 * spread(linear)
    # on the log axis equal ratios are equal distances
    ys = [float(y) for y in re.findall(r'<circle cx="[\d.]+" cy="([\d.]+)"', line_chart(
        "L", [1.0, 2.0, 3.0], [Series("loss", [10.0, 1.0, 0.1], "#000")], log_y=True))]
    assert ys[1] - ys[0] == pytest.approx(ys[2] - ys[1], abs=0.15)


@pytest.mark.parametrize("mode,erased,card", [("prune", [], False), ("erase", [], True), ("both", ["cell.op"], True),
                                              (None, [], False), (None, ["cell.op"], True)])
def test_erasure_card_only_where_operators_can_be_erased(tmp_path, mode, erased, card):
    report = {"mode": mode, "erased_operators": erased, "erasing_groups": 11, "group_sparsity": 0.25,
              "prunable_groups": 40, "removed_groups": 10}
    write_report_html(tmp_path / "r.html", report=report, history=[])
    cards = _card_texts((tmp_path / "r.html").read_text())
    assert ("operators erased" in cards) is card
    if card:
        assert cards["operators erased"] == (str(len(erased)), "of 11 erasing groups")
    assert cards["channel groups removed"] == ("25.0 %", "10 of 40 prunable channel groups")


def test_interrupted_run_gets_a_partial_report_then_the_full_one(tmp_path):
    import json

    from otonas.search import SearchConfig, search

    out = tmp_path / "run"
    cfg = dict(out=str(out), model="search_spaces:resnet20", model_kwargs={"size": "tiny"}, mode="prune",
               batch_size=256, epochs=3, progress=False)

    def stop_after_two(row):
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        search(SearchConfig(**cfg), on_epoch=stop_after_two)
    assert not (out / "report.json").exists()  # that would mark the run finished
    html = (out / "report.html").read_text(encoding="utf-8")
    history = json.loads((out / "checkpoint" / "run.json").read_text())["history"]
    assert len(history) == 2
    assert '<meta name="otonas-report" content="partial">' in html and "(partial)</h1>" in html
    assert "The run stopped after epoch 2 of 3: it was interrupted." in html and "--resume" in html
    cards = _card_texts(html)
    last = history[-1]
    assert cards["channel groups removed"][0] == f"{last['group_sparsity'] * 100:.1f} %"
    assert cards["channel groups removed"][1].startswith(f"{last['removed_groups']:,} of ")
    from otonas.report._charts import human

    assert cards["FLOPs (MACs / sample)"][0] == human(last["flops"])
    assert len(_chart(html, "Accuracy").findall(f".//{SVG_NS}circle")) == 2 * len(history)

    report = search(SearchConfig(**{**cfg, "resume": True}))
    html = (out / "report.html").read_text(encoding="utf-8")
    assert 'name="otonas-report"' not in html and "Partial report" not in html and "(partial)" not in html
    assert json.loads((out / "report.json").read_text())["removed_groups"] == report["removed_groups"]
