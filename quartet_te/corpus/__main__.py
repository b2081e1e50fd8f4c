"""`python -m quartet_te.corpus`: list, build and verify corpora."""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from .pack import pack, unpack
from .shards import SHARD_MIB, build, verify
from .sources import DEFAULT_SOURCES


# ------------------------------------------------------------------------------------- CLI
def _main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m quartet_te.corpus", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build token shards and manifest.json")
    b.add_argument("--out", required=True, type=Path)
    b.add_argument("--tokenizer", choices=["byte", "bpe"], default="byte")
    b.add_argument("--vocab", type=int, default=8192, help="BPE vocabulary size (with --tokenizer bpe)")
    b.add_argument("--val-permille", type=int, default=10, help="held-out documents, in thousandths")
    b.add_argument("--shard-mib", type=float, default=SHARD_MIB)
    b.add_argument("--sources", default=None, help="comma-separated subset of: "
                   + ",".join(s.name for s in DEFAULT_SOURCES))
    b.add_argument("--strict", action="store_true", help="fail if a source is not installed")
    sub.add_parser("list", help="show the sources and whether they are installed")
    v = sub.add_parser("verify", help="check a built corpus's shards against manifest.json")
    v.add_argument("dir", type=Path)
    pk = sub.add_parser("pack", help="narrow + xz-compress a built corpus for transfer (unpack restores it)")
    pk.add_argument("src", type=Path)
    pk.add_argument("out", type=Path)
    pk.add_argument("--preset", type=int, default=6, help="xz preset (0-9)")
    pk.add_argument("--workers", type=int, default=2)
    up = sub.add_parser("unpack", help="rebuild and verify the shards of a packed corpus")
    up.add_argument("packed", type=Path)
    up.add_argument("out", type=Path)
    args = p.parse_args(argv)
    if args.cmd == "pack":
        index = pack(args.src, args.out, preset=args.preset, workers=args.workers)
        total = sum(part["bytes"] for part in index["parts"])
        print(f"{args.out}: {len(index['parts'])} parts, {total / 2**20:.1f} MiB ({index['dtype']}, {index['codec']})")
        return 0
    if args.cmd == "unpack":
        print(f"{unpack(args.packed, args.out)}: all shards match manifest.json")
        return 0
    if args.cmd == "list":
        for s in DEFAULT_SOURCES:
            ver = s.version()
            print(f"{s.name:12s} {s.package:24s} {'installed ' + ver if ver != '?' else 'MISSING':28s} {s.licence}")
        return 0
    if args.cmd == "verify":
        problems = verify(args.dir)
        print("\n".join(problems) or f"{args.dir}: all shards match manifest.json")
        return 1 if problems else 0
    sources = DEFAULT_SOURCES
    if args.sources:
        names = args.sources.split(",")
        unknown = set(names) - {s.name for s in DEFAULT_SOURCES}
        if unknown:
            p.error(f"unknown sources {sorted(unknown)}")
        sources = tuple(s for s in DEFAULT_SOURCES if s.name in names)
    # Progress is logged by the library (quartet_te.corpus.*); the CLI shows it on stderr.
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    build(args.out, sources, args.tokenizer, args.vocab, args.val_permille, args.shard_mib,
          skip_missing=not args.strict)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
