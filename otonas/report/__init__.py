"""Reports: the network as a picture (SVG/HTML) and one self-contained HTML page per run."""

from ._facts import LayerChannels, layer_channels
from ._html import render_graph_html, write_report_html
from ._svg import render_graph_svg

__all__ = ["render_graph_svg", "render_graph_html", "write_report_html", "layer_channels", "LayerChannels"]
