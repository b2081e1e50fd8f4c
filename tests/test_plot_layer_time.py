"""tools/plot_layer_time.py: parses the layer-bench and host-ledger logs, writes the figure."""
import importlib.util
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("plot_layer_time", _ROOT / "tools" / "plot_layer_time.py")
plt_tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plt_tool)

LAYER = """device: X
| recipe | fwd+bwd ms (median) | vs BF16 | host ms |
|---|---|---|---|
| bf16 | 5.00 | 1.00x | 4.00 |
| quartet2 | 8.00 | 1.60x | 6.50 |

| recipe | CUDA-graph replay ms | vs BF16 replay |
|---|---|---|
| bf16 | 4.10 | 1.00x |
| quartet2 | 6.20 | 1.51x |
"""

LEDGER = """## before
te.TransformerLayer ...
| recipe | host ms | inside quartet_te | outside | outside - BF16 total |
|---|---:|---:|---:|---:|
| bf16 | 4.000 | 0.000 | 4.000 | +0.000 |
| quartet2 | 6.000 | 2.500 | 3.500 | -0.500 |
quartet2: entry points (calls per step, µs per step)
  custom_gemm (GEMM hook)               12    1500.0
    inner: _C.quantize                  20     600.0
    inner: _C.gemm_bf16                 12     400.0
te.Linear 256x256
| recipe | host ms | inside quartet_te | outside | outside - BF16 total |
|---|---:|---:|---:|---:|
| bf16 | 0.500 | 0.000 | 0.500 | +0.000 |
| quartet2 | 9.000 | 0.700 | 0.600 | +0.100 |
## no timers
| recipe | host ms | inside quartet_te | outside | outside - BF16 total |
|---|---:|---:|---:|---:|
| bf16 | 4.000 | 0.000 | 4.000 | +0.000 |
| quartet2 | 7.000 | 3.000 | 4.000 | +0.000 |
"""


def test_parsers_read_the_tables():
    layer = plt_tool.parse_layer_log(LAYER)
    assert layer == {"bf16": {"eager": 5.0, "host": 4.0, "graph": 4.1},
                     "quartet2": {"eager": 8.0, "host": 6.5, "graph": 6.2}}  # fmt: skip
    ledger = plt_tool.parse_ledger_log(LEDGER)
    # the layer block only (not the te.Linear one), and sections without extension timers left out
    assert ledger == {"before": {"bf16": 4.0, "quartet2": 6.0, "inside": 2.5, "extension": pytest.approx(1.0)}}
    with pytest.raises(ValueError, match="no timing table"):
        plt_tool.parse_layer_log("nothing here")
    with pytest.raises(ValueError, match="no TransformerLayer ledger"):
        plt_tool.parse_ledger_log("## x\nnothing")


def test_committed_logs_plot(tmp_path):
    """The logs BENCHMARKS §9f cites parse and plot."""
    docs = _ROOT / "docs" / "fastpath"
    out = tmp_path / "layer.png"
    plt_tool.main(["--layer", str(docs / "te_layer_h200_2026-12-03g.log"),
                   "--ledger", str(docs / "host_ledger_h200_2026-12-03g.log"), "--out", str(out)])  # fmt: skip
    assert out.stat().st_size > 10_000
    ledger = plt_tool.parse_ledger_log((docs / "host_ledger_h200_2026-12-03g.log").read_text())
    assert len(ledger) == 2 and all(v["extension"] < v["inside"] < v["quartet2"] for v in ledger.values())
