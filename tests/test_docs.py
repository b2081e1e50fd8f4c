"""The docs describe the project, not the machinery it was developed with: no references to
files outside the repository (`../shared/`) and no wording about remote-device calls, file
transfer limits or time budgets."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", ROOT / "BENCHMARKS.md", ROOT / "integration" / "megatron" / "README.md",
               *(ROOT / "docs").glob("*.md")])
OFF_TOPIC = re.compile(
    r"\.\./shared/|\bshared/gpu\b|device (call|time|tool)|\$OUT\b|budget_left_s|\blease\b|\bsessions?\b"
    r"|carry=\[|\"warm\"",
    re.IGNORECASE,
)


def test_docs_describe_the_project_only():
    hits = []
    for path in DOCS:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if OFF_TOPIC.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()[:100]}")
    assert hits == []
