"""Collect a sweep into a markdown table and a chart.

    python tools/train.py -m loss_cls=qfl,vfl,focal,bce seed=0,1
    python tools/ablate.py runs/multirun/<date> [--out ablation.md]

Rows are the arms (the overrides that differ between runs, seeds pooled as mean +- std).
Writes ``ablation.md`` and ``ablation.png`` into the sweep folder unless --out says otherwise.
"""
import argparse
import sys
from pathlib import Path

from detector.ablation import load_runs, markdown_table, plot, summarise


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path, help="a Hydra multirun folder")
    parser.add_argument("--out", type=Path, default=None, help="markdown file (default: <sweep_dir>/ablation.md)")
    args = parser.parse_args(argv)
    try:
        rows = summarise(load_runs(args.sweep_dir))
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    table = markdown_table(rows)
    out = args.out or args.sweep_dir / "ablation.md"
    out.write_text(table + "\n")
    plot(rows, out.with_suffix(".png"))
    print(table)
    print(f"\nwrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
