"""Opcode histogram of the hot quantize kernels in the built extension's SASS (static counts).

    cuobjdump -sass quartet_te/_C*.so | python tools/sass_histogram.py [--top 25]

Static counts per kernel (each loop body counted once), grouped by opcode: which instructions the
quantizers spend their issue slots on (`tools/gpu_fastpath.sh ncu` prints it after the profile).
"""
from __future__ import annotations

import argparse
import collections
import re
import sys

HOT = ("row_kernel", "tile_kernel")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--match", default="", help="only kernels whose mangled name contains this")
    args = p.parse_args()
    counts: dict[str, collections.Counter] = {}
    current = None
    for line in sys.stdin:
        m = re.match(r"\s*Function : (\S+)", line)
        if m:
            name = m.group(1)
            current = name if any(h in name for h in HOT) and args.match in name else None
            if current:
                counts[current] = collections.Counter()
            continue
        if current is None:
            continue
        m = re.match(r"\s*/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)(\.[A-Z0-9_.]+)?", line)
        if m:
            counts[current][m.group(1)] += 1
    for name, c in sorted(counts.items()):
        total = sum(c.values())
        top = ", ".join(f"{op} {n}" for op, n in c.most_common(args.top))
        print(f"{name}: {total} instructions; {top}")


if __name__ == "__main__":
    main()
