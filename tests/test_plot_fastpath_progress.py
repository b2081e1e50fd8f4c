"""tools/plot_fastpath_progress.py: reads the progress record, rejects bad rows, writes the figure;
every row of docs/fastpath/progress.csv names a BENCHMARKS.md section that exists."""
import importlib.util
import re
import sys
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("plot_fastpath_progress", _ROOT / "tools" / "plot_fastpath_progress.py")
tool = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = tool  # dataclasses resolve annotations through it
_spec.loader.exec_module(tool)

CSV = """# comment
section,date,step,metric,low,high,note
9,2026-12-02,1-5,linear_8192x8192x8192,1.21,1.29,
9b,2026-12-03,6,linear_8192x8192x8192,1.19,1.19,one run
9b,2026-12-03,6,megatron_graph,1.06,1.08,
"""


def test_reads_rows_in_order():
    pts = tool.read_points(CSV)
    assert [(p.step, p.metric, p.low, p.high) for p in pts] == [
        ("1-5", "linear_8192x8192x8192", 1.21, 1.29),
        ("6", "linear_8192x8192x8192", 1.19, 1.19),
        ("6", "megatron_graph", 1.06, 1.08),
    ]
    assert pts[1].note == "one run"
    assert tool.steps_in_order(pts) == ["1-5", "6"]


@pytest.mark.parametrize("row, match", [
    ("9,d,1,linear_typo,1.2,1.3,", "unknown metric"),
    ("9,d,1,layer_eager,1.4,1.3,", "low <= high"),
    ("9,d,1,layer_eager,fast,1.3,", "row 2"),
])  # fmt: skip
def test_bad_rows_are_named(row, match):
    with pytest.raises(ValueError, match=match):
        tool.read_points("section,date,step,metric,low,high,note\n" + row + "\n")


def test_writes_the_figure(tmp_path):
    out = tmp_path / "p.png"
    tool.plot(tool.read_points(CSV), out)
    assert out.stat().st_size > 10_000


def test_the_record_cites_existing_sections():
    pts = tool.read_points((_ROOT / "docs" / "fastpath" / "progress.csv").read_text())
    headings = set(re.findall(r"^## (\w+)\. ", (_ROOT / "BENCHMARKS.md").read_text(), flags=re.M))
    missing = {p.section for p in pts if p.section != "issue 13"} - headings
    assert not missing, f"progress.csv cites sections BENCHMARKS.md does not have: {missing}"
    assert {p.metric for p in pts} == set(tool.METRICS)
