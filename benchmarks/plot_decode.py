"""Plot decode latency and peak memory against context length from ``benchmarks/decode.py``'s table.

    python benchmarks/decode.py | tee decode.md
    python benchmarks/plot_decode.py decode.md -o docs/decode.png

Reads every markdown row of the decode table (system, context, ms/token, peak GiB, ...) and draws two
panels, one line per system: ms/token and peak GiB against context. Rows that are "error" or "missing"
are listed under the plot instead of drawn, so a failed peer stays visible.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HEADER = "| system | context | decode ms/token"


def parse(text: str) -> tuple[dict[str, list[tuple[int, float, float]]], list[str]]:
    """{system: [(context, ms, peak_gib)]} from the table in ``text``, and notes on rows not drawn."""
    series: dict[str, list[tuple[int, float, float]]] = {}
    notes: list[str] = []
    in_table = False
    for line in text.splitlines():
        if line.startswith(HEADER):
            in_table = True
            continue
        if not in_table or not line.startswith("|") or line.startswith("|---"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        system, context, ms, peak = cells[0], cells[1], cells[2], cells[3]
        try:
            point = (int(context), float(ms), float(peak) if peak not in ("", "n/a") else float("nan"))
        except ValueError:
            notes.append(f"{system} ({context}): {ms} {cells[-1]}".strip())
            continue
        series.setdefault(system, []).append(point)
    if not in_table:
        raise ValueError(f"no decode table (a line starting {HEADER!r}) in the input")
    return series, notes


def plot(series, notes, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_ms, ax_mem) = plt.subplots(1, 2, figsize=(11, 4.2))
    for system, points in series.items():
        points = sorted(points)
        ctx = [p[0] for p in points]
        ax_ms.plot(ctx, [p[1] for p in points], marker="o", label=system)
        ax_mem.plot(ctx, [p[2] for p in points], marker="o", label=system)
    for ax, label in ((ax_ms, "ms per token (median)"), (ax_mem, "peak memory (GiB)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context (tokens)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    ax_ms.set_yscale("log")
    ax_ms.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    if notes:
        fig.text(0.01, 0.01, "not drawn: " + "; ".join(notes)[:300], fontsize=6)
    fig.tight_layout(rect=(0, 0.04 if notes else 0, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("table", type=Path, help="saved output of benchmarks/decode.py")
    p.add_argument("-o", "--output", type=Path, default=Path("decode.png"))
    p.add_argument("--title", default="decode at batch 1: latency and memory against context")
    args = p.parse_args(argv)
    try:
        series, notes = parse(args.table.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        print(f"plot_decode: error: {err}", file=sys.stderr)
        return 2
    plot(series, notes, args.output, args.title)
    print(f"wrote {args.output} ({len(series)} systems, {len(notes)} rows not drawn)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
