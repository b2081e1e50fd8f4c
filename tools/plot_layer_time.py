"""Plot where a `te.TransformerLayer` fwd+bwd spends its time (BENCHMARKS §9f), from the logs of
`tests/te/bench_te_layer.py --graph ...` and `tests/te/host_ledger.py`:

    python tools/plot_layer_time.py --layer docs/fastpath/te_layer_h200_2026-12-03g.log \\
        --ledger docs/fastpath/host_ledger_h200_2026-12-03g.log --out docs/fastpath_layer_time.png

Left: per recipe, the eager fwd+bwd time, the host time to issue it and the CUDA-graph replay
(the GPU alone). Right: Quartet II's host time per ledger section (e.g. before / after a change),
split into our Python, our extension calls and the rest (TE, torch, autograd), against BF16's
total host time in the same section.
"""
from __future__ import annotations

import argparse
import re
import textwrap
from pathlib import Path

_ROW = re.compile(r"^\|\s*([\w\-]+)\s*\|(.*)\|\s*$")


def _table_rows(lines: list[str]) -> dict[str, list[str]]:
    """Markdown table rows of `lines` keyed by their first cell (header and rule rows skipped)."""
    rows = {}
    for line in lines:
        m = _ROW.match(line.strip())
        if m and m.group(1) not in ("recipe",) and not set(m.group(2)) <= set("-|: "):
            rows[m.group(1)] = [c.strip() for c in m.group(2).split("|")]
    return rows


def parse_layer_log(text: str) -> dict[str, dict[str, float]]:
    """{recipe: {"eager": ms, "host": ms, "graph": ms}} from a `bench_te_layer.py` log."""
    eager_part, _, graph_part = text.partition("CUDA-graph replay ms")
    out: dict[str, dict[str, float]] = {}
    for name, cells in _table_rows(eager_part.splitlines()).items():
        out.setdefault(name, {}).update(eager=float(cells[0]), host=float(cells[2]))
    for name, cells in _table_rows(graph_part.splitlines()).items():
        out.setdefault(name, {})["graph"] = float(cells[0])
    if not out:
        raise ValueError("no timing table found in the layer log")
    return out


def parse_ledger_log(text: str) -> dict[str, dict[str, float]]:
    """{section: {"bf16": ms, "quartet2": ms, "inside": ms, "extension": ms}} for the
    TransformerLayer block of every "## section" of a `host_ledger.py` log (one unnamed section
    if there are no headers) that has the extension timers."""
    sections = re.split(r"^## (.+)$", text, flags=re.M)
    named = list(zip(sections[1::2], sections[2::2])) if len(sections) > 1 else [("", text)]
    out = {}
    for title, body in named:
        layer = body.split("te.Linear", 1)[0]  # the layer's block comes first
        rows = _table_rows(layer.splitlines())
        if "quartet2" not in rows or "bf16" not in rows:
            continue
        inner = [float(m.group(1)) for m in re.finditer(r"inner: _C\.\w+\s+\d+\s+([\d.]+)", layer)]
        if not inner:  # a ledger without the extension timers cannot be split: left out
            continue
        ext = sum(inner) / 1e3
        out[title.strip()] = {"bf16": float(rows["bf16"][0]), "quartet2": float(rows["quartet2"][0]),
                              "inside": float(rows["quartet2"][1]), "extension": ext}  # fmt: skip
    if not out:
        raise ValueError("no TransformerLayer ledger table found")
    return out


def plot(layer: dict, ledger: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    recipes = [r for r in ("bf16", "fp8_current", "quartet2", "nvfp4-sr") if r in layer]
    kinds = [("eager", "eager fwd+bwd"), ("host", "host issue"), ("graph", "CUDA-graph replay (GPU only)")]
    width = 0.8 / len(kinds)
    for i, (key, label) in enumerate(kinds):
        xs = [j + (i - 1) * width for j, r in enumerate(recipes) if key in layer[r]]
        ys = [layer[r][key] for r in recipes if key in layer[r]]
        a.bar(xs, ys, width, label=label)
    a.set_xticks(range(len(recipes)), recipes)
    a.set_ylabel("ms per fwd+bwd")
    a.set_title("te.TransformerLayer: wall, host and GPU time")
    a.set_ylim(0, 1.3 * max(v for r in recipes for v in layer[r].values()))
    a.legend(fontsize=8, loc="upper left")
    names = list(ledger)
    py = [ledger[n]["inside"] - ledger[n]["extension"] for n in names]
    ext = [ledger[n]["extension"] for n in names]
    rest = [ledger[n]["quartet2"] - ledger[n]["inside"] for n in names]
    xs = range(len(names))
    b.bar(xs, rest, 0.5, label="TE, torch, autograd")
    b.bar(xs, ext, 0.5, bottom=rest, label="quartet_te extension calls")
    b.bar(xs, py, 0.5, bottom=[r + e for r, e in zip(rest, ext)], label="quartet_te Python")
    for x, n in zip(xs, names):
        b.hlines(ledger[n]["bf16"], x - 0.3, x + 0.3, colors="k", linestyles="--")
    b.plot([], [], "k--", label="BF16 total host time")
    b.set_xticks(list(xs), [textwrap.fill(n, 24) for n in names], fontsize=8)
    b.set_ylim(0, 1.4 * max(max(ledger[n]["quartet2"], ledger[n]["bf16"]) for n in names))
    b.set_ylabel("host ms per fwd+bwd")
    b.set_title("Quartet II host time (ledger)")
    b.legend(fontsize=8, loc="upper center", ncol=2)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layer", required=True, help="log of bench_te_layer.py with --graph")
    p.add_argument("--ledger", required=True, help="log of host_ledger.py (sections '## ...')")
    p.add_argument("--out", required=True, help="PNG to write")
    args = p.parse_args(argv)
    layer = parse_layer_log(Path(args.layer).read_text())
    ledger = parse_ledger_log(Path(args.ledger).read_text())
    plot(layer, ledger, Path(args.out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
