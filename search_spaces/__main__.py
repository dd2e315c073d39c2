"""``python -m search_spaces``: measure every entry and print a Markdown table.

Builds each entry at its default and tiny sizes, counts the parameters,
runs one forward pass on a batch of 2 at the tiny size, and prints
name / kind / input / output / params; ``--check`` exits non-zero when a
measured count differs from the count registered in ``info(name)``.
"""

from __future__ import annotations

import argparse
import sys

import torch

import search_spaces


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _fmt(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} k"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m search_spaces", description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail on a count that differs from the registry")
    args = parser.parse_args(argv)
    print("| name | kind | input | output | params (default) | params (tiny) | paper |")
    print("|---|---|---|---|---:|---:|---:|")
    bad = []
    for name in search_spaces.list():
        entry = search_spaces.info(name)
        default = _params(search_spaces.create(name))
        tiny_model = search_spaces.create(name, size="tiny").eval()
        tiny = _params(tiny_model)
        if entry.input_dtype == torch.int64:
            x = torch.zeros((2, *entry.tiny_input_shape), dtype=torch.int64)
        else:
            x = torch.randn(2, *entry.tiny_input_shape)
        with torch.no_grad():
            tiny_model(x)
        if (default, tiny) != (entry.default_params, entry.tiny_params):
            bad.append(f"{name}: measured {default}/{tiny}, registered {entry.default_params}/{entry.tiny_params}")
        print(f"| {name} | {entry.kind} | {entry.input_shape} {str(entry.input_dtype).replace('torch.', '')} "
              f"| {entry.output} | {default:,} ({_fmt(default)}) | {tiny:,} | {_fmt(entry.paper_params)} |")
    for line in bad:
        print(line, file=sys.stderr)
    return 1 if (args.check and bad) else 0


if __name__ == "__main__":
    raise SystemExit(main())
