"""Toy-scale ablations of VisualRWKV's design choices: scan policy, prompt layout, data-dependent recurrence.

    python examples/ablations.py --jobs 2 --seeds 0 1 2 3 4 --steps 600  # 40 small models, ~75 min on 2 cores
    python examples/ablations.py --report-only                          # rebuild docs/ablations.md from results

Every run trains the same small VisualRWKV as ``train_toy.py`` (same recipe, defaults included) from
scratch with a fixed step budget, on a ShapesVQA task chosen so the choices can matter: the 3 x 3 grid
(one patch per cell) crowded with up to 7 shapes, and two question types that read the image in opposite
ways: ``color_at`` needs one specific cell ("What color is the shape in the bottom left?"), ``count_color``
needs every cell filtered by a colour named in the question ("How many red shapes are there?"). A
recurrent model that reads the image before the question (image first) must keep every cell in its state;
one that reads the question first (image last, sandwich) knows what to look for while it reads the image.
Only one factor changes at a time against the base (BiDir, Sandwich, data-dependent token shift and decay:
the released VisualRWKV v6.0 choices). Each configuration runs with several seeds (the seed changes the
initial weights and the training stream); held-out exact match is measured by greedy generation on the
test split (500 samples, the same for every run).

Results land in ``--results`` (one JSON per run; finished runs are skipped, so an interrupted sweep resumes)
and are summarised, every run included, in ``docs/ablations.md`` and ``docs/ablations.png``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "examples" / "train_toy.py"

#: The task every run trains on (train_toy.py arguments).
TASK = ["--max-objects", "7", "--question-types", "color_at,count_color", "--curriculum-fraction", "0"]
TYPES = ["color_at", "count_color"]
BASE = dict(scan="bidir", layout="sandwich", token_shift="data", decay="data")
#: (group, label, changes from BASE). The base appears once and is shared by the three groups.
CONFIGS: list[tuple[str, str, dict]] = [
    ("base", "BiDir + sandwich + data-dependent (base)", {}),
    ("scan", "UniDir", dict(scan="unidir")),
    ("scan", "MultiDir", dict(scan="multidir")),
    ("layout", "image first", dict(layout="first")),
    ("layout", "image last", dict(layout="last")),
    ("recurrence", "static token shift", dict(token_shift="static")),
    ("recurrence", "static decay", dict(decay="static")),
    ("recurrence", "static shift + decay (RWKV-5-like)", dict(token_shift="static", decay="static")),
]
PAPER = """\
The paper's ablations (VisualRWKV, COLING 2025; as collected in the project's reference notes), for comparison
of direction only — the scale, data and benchmarks are unrelated to this toy task:

| ablation | setting | VQAv2 | SQA | TextVQA | GQA |
|---|---|---|---|---|---|
| prompt | image first | 67.93 | 65.59 | 47.13 | 48.52 |
| prompt | image last | 63.07 | 57.66 | 48.52 | 44.19 |
| prompt | sandwich | 69.71 | 65.20 | 50.25 | 50.50 |
| scan (1.6B RWKV-6) | BiDir | 69.26 | 57.61 | 43.17 | 54.85 |
| scan (1.6B RWKV-6) | MultiDir | 69.20 | 57.31 | 42.97 | 54.63 |
| scan (RWKV-5 base) | UniDir | 51.03 | 41.94 | 35.19 | 48.09 |
| scan (RWKV-5 base) | BiDir | 65.62 | 47.30 | 37.13 | 48.60 |
| recurrence | static -> data-dependent (VQAv2) | 51.08 -> 65.82 | | | |
"""


def settings(changes: dict) -> dict:
    return {**BASE, **changes}


def run_name(changes: dict, seed: int) -> str:
    s = settings(changes)
    return f"{s['scan']}-{s['layout']}-shift_{s['token_shift']}-decay_{s['decay']}-seed{seed}"


def train_command(changes: dict, seed: int, args: argparse.Namespace, result: Path) -> list[str]:
    s = settings(changes)
    return [
        sys.executable,
        str(TRAIN),
        *TASK,
        "--steps",
        str(args.steps),
        "--batch-size",
        str(args.batch_size),
        "--lr",
        str(args.lr),
        "--seed",
        str(seed),
        "--scan",
        s["scan"],
        "--layout",
        s["layout"],
        "--token-shift",
        s["token_shift"],
        "--decay",
        s["decay"],
        "--eval-size",
        str(args.eval_size),
        "--threads",
        "1",
        "--log-every",
        "100",
        "--device",
        "cpu",
        "--result-json",
        str(result),
    ]


def run_one(cmd: list[str], log: Path) -> tuple[int, float]:
    start = time.perf_counter()
    with log.open("w") as f:
        code = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    return code, time.perf_counter() - start


def sweep(args: argparse.Namespace) -> None:
    args.results.mkdir(parents=True, exist_ok=True)
    # Seed-major order: if the budget runs out, every configuration has the same number of seeds done.
    todo = []
    for seed in args.seeds:
        for _, label, changes in CONFIGS:
            if args.only and not any(o.lower() in label.lower() for o in args.only):
                continue
            result = args.results / f"{run_name(changes, seed)}.json"
            if not result.exists():
                todo.append((label, seed, train_command(changes, seed, args, result), result))
    print(f"{len(todo)} runs to do, {args.jobs} at a time; results in {args.results}", flush=True)
    deadline = time.monotonic() + args.budget_minutes * 60 if args.budget_minutes else None
    with futures.ThreadPoolExecutor(args.jobs) as pool:
        pending = {}
        queue = list(todo)
        while queue or pending:
            while queue and len(pending) < args.jobs and (deadline is None or time.monotonic() < deadline):
                label, seed, cmd, result = queue.pop(0)
                print(f"start  {label} seed {seed}: {shlex.join(cmd[1:])}", flush=True)
                pending[pool.submit(run_one, cmd, result.with_suffix(".log"))] = (label, seed, result)
            if deadline is not None and time.monotonic() >= deadline and queue:
                print(f"time budget reached: {len(queue)} runs not started", flush=True)
                queue.clear()
            if not pending:
                break
            done, _ = futures.wait(pending, return_when=futures.FIRST_COMPLETED)
            for fut in done:
                label, seed, result = pending.pop(fut)
                code, seconds = fut.result()
                acc = json.loads(result.read_text())["eval"]["accuracy"] if result.exists() else None
                print(
                    f"done   {label} seed {seed}: exit {code}, {seconds:.0f}s, "
                    f"accuracy {'-' if acc is None else f'{100 * acc:.1f}%'}",
                    flush=True,
                )


def load_results(results: Path) -> dict[str, list[dict]]:
    by_label: dict[str, list[dict]] = {label: [] for _, label, _ in CONFIGS}
    for _, label, changes in CONFIGS:
        for path in sorted(results.glob(f"{run_name(changes, 0)[: -len('seed0')]}seed*.json")):
            data = json.loads(path.read_text())
            data["seed"] = int(path.stem.rsplit("seed", 1)[1])
            by_label[label].append(data)
    return by_label


def _fmt(values: list[float]) -> str:
    if not values:
        return "—"
    mean = 100 * statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}"


NOTES_BEGIN, NOTES_END = "<!-- notes: kept when the report is rebuilt -->", "<!-- end of notes -->"


def findings(by_label: dict) -> list[str]:
    """One line per setting: its mean against the base, and whether the gap exceeds the seed-to-seed spread."""
    base = [r["eval"]["accuracy"] for r in by_label[CONFIGS[0][1]]]
    if len(base) < 2:
        return ["(fewer than two seeds of the base: no comparison)"]
    lines = []
    for _, label, _ in CONFIGS[1:]:
        accs = [r["eval"]["accuracy"] for r in by_label[label]]
        if len(accs) < 2:
            continue
        delta = 100 * (statistics.fmean(accs) - statistics.fmean(base))
        # Two-sample standard error of the difference of means, from the seeds.
        se = 100 * (statistics.variance(accs) / len(accs) + statistics.variance(base) / len(base)) ** 0.5
        verdict = "beyond" if abs(delta) > 2 * se else "within"
        lines.append(
            f"* {label}: {delta:+.1f} points against the base ({verdict} two standard errors, "
            f"{2 * se:.1f}, of the seed-to-seed spread)"
        )
    return lines


def _kept_notes(path: Path) -> str:
    if not path.exists():
        return f"{NOTES_BEGIN}\n{NOTES_END}"
    text = path.read_text()
    if NOTES_BEGIN in text and NOTES_END in text:
        return text[text.index(NOTES_BEGIN) : text.index(NOTES_END) + len(NOTES_END)]
    return f"{NOTES_BEGIN}\n{NOTES_END}"


def report(args: argparse.Namespace) -> str:
    by_label = load_results(args.results)
    types = TYPES
    rows = []
    groups = {
        "scan": ["UniDir", CONFIGS[0][1], "MultiDir"],
        "layout": ["image first", "image last", CONFIGS[0][1]],
        "recurrence": [CONFIGS[0][1], "static token shift", "static decay", "static shift + decay (RWKV-5-like)"],
    }
    names = {
        "scan": "scan policy (layout sandwich, data-dependent)",
        "layout": "prompt layout (BiDir, data-dependent)",
        "recurrence": "recurrence (BiDir, sandwich)",
    }
    for group, labels in groups.items():
        for label in labels:
            runs = by_label[label]
            accs = [r["eval"]["accuracy"] for r in runs]
            per = [
                _fmt(
                    [
                        r["eval"]["per_type"][t][0] / r["eval"]["per_type"][t][1]
                        for r in runs
                        if t in r["eval"]["per_type"]
                    ]
                )
                for t in types
            ]
            seeds = ", ".join(f"{100 * r['eval']['accuracy']:.1f}" for r in sorted(runs, key=lambda r: r["seed"]))
            loss = (f"{statistics.fmean(r['history'][-1]['loss'] for r in runs):.3f}") if runs else "—"
            rows.append(
                f"| {names[group]} | {label} | {len(runs)} | **{_fmt(accs)}** | {seeds or '—'} | "
                f"{' | '.join(per)} | {loss} |"
            )
    done = sum(len(v) for v in by_label.values())
    seconds = [r["train_seconds"] for v in by_label.values() for r in v]
    # The budget is read back from the runs themselves, so --report-only cannot misstate it.
    budget = {}
    for v in by_label.values():
        for r in v:
            argv = r.get("argv", [])
            for flag in ("--steps", "--batch-size", "--lr", "--eval-size"):
                if flag in argv:
                    budget.setdefault(flag, set()).add(argv[argv.index(flag) + 1])
    mixed = sorted(f for f, vals in budget.items() if len(vals) > 1)
    if mixed:
        raise SystemExit(
            f"ablations: the runs in {args.results} differ in {', '.join(mixed)}; use one budget per results directory"
        )
    steps, batch_size, lr, eval_size = (
        next(iter(budget[f])) if f in budget else str(d)
        for f, d in (
            ("--steps", args.steps),
            ("--batch-size", args.batch_size),
            ("--lr", args.lr),
            ("--eval-size", args.eval_size),
        )
    )
    cmd = (
        f"python examples/ablations.py --jobs {args.jobs} --seeds {' '.join(map(str, args.seeds))} "
        f"--steps {steps} --batch-size {batch_size} --lr {lr} --eval-size {eval_size}"
    )
    md = [
        "# Ablations at toy scale",
        "",
        "Small VisualRWKV models (`examples/train_toy.py`: a 2-block ViT trained from scratch, a linear projector, a "
        "4-layer RWKV-6 of width 128, head size 32) trained from scratch on ShapesVQA, one factor changed at a "
        "time against the base (BiDir scan, Sandwich prompt, data-dependent token shift and decay).",
        "",
        f"* task: `{' '.join(TASK)}` — 48 px images, the 3 x 3 grid (one 16 px patch per cell: 9 patches + CLS), "
        "1-7 shapes; `color_at` asks about one specific cell, `count_color` about every cell of a colour named "
        "in the question",
        f"* budget per run: {steps} steps of batch {batch_size}, peak lr {lr} (train_toy.py's other "
        "defaults: ViT and projector at half that rate, fixed random ViT queries/keys), "
        "one CPU thread; accuracy is held-out exact match of greedily generated answers on the first "
        f"{eval_size} test-split samples (seed 0; the same samples for every run)",
        f"* runs finished: {done} of {len(CONFIGS) * len(args.seeds)} planned "
        f"({len(CONFIGS)} configurations x seeds {', '.join(map(str, args.seeds))})"
        + (f"; {statistics.fmean(seconds) / 60:.1f} min of training per run on average" if seconds else ""),
        "",
        "Reproduce (results in `docs/ablations_results/`, one JSON per run; rerunning skips finished runs):",
        "",
        "```",
        cmd,
        "```",
        "",
        "All runs are reported; mean ± standard deviation over seeds, then every seed's accuracy.",
        "",
        "| ablation | setting | seeds | accuracy % | per seed | " + " | ".join(TYPES) + " | final train loss |",
        "|---|---|---|---|---|" + "---|" * len(TYPES) + "---|",
        *rows,
        "",
        "(The base row appears in each group; it is the same runs.)",
        "",
        "![ablations](ablations.png)",
        "",
        "## Differences from the base",
        "",
        *findings(by_label),
        "",
        "## Next to the paper",
        "",
        PAPER,
        _kept_notes(args.markdown),
    ]
    text = "\n".join(md) + "\n"
    args.markdown.write_text(text)
    plot(by_label, groups, args.markdown.with_suffix(".png"))
    return text


def plot(by_label: dict, groups: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot written (pip install matplotlib)", file=sys.stderr)
        return
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.8), sharey=True)
    short = {
        CONFIGS[0][1]: "base\n(BiDir, sandwich,\ndata-dep.)",
        "static shift + decay (RWKV-5-like)": "static\nshift+decay",
        "static token shift": "static\nshift",
        "static decay": "static\ndecay",
        "image first": "image\nfirst",
        "image last": "image\nlast",
    }
    for ax, (group, labels) in zip(axes, groups.items()):
        for x, label in enumerate(labels):
            accs = [100 * r["eval"]["accuracy"] for r in by_label[label]]
            if accs:
                ax.bar(x, statistics.fmean(accs), color="#7aa6c2" if label != CONFIGS[0][1] else "#e0a040", width=0.6)
                ax.scatter([x] * len(accs), accs, color="black", s=12, zorder=3)
        ax.set_xticks(range(len(labels)), [short.get(lbl, lbl) for lbl in labels], fontsize=8)
        ax.set_title(group)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("held-out exact match (%)")
    fig.suptitle("VisualRWKV toy ablations (bars: mean over seeds; dots: seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--eval-size", type=int, default=500)
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel (one CPU thread each)")
    p.add_argument("--budget-minutes", type=float, default=None, help="start no run after this many minutes")
    p.add_argument("--results", type=Path, default=ROOT / "docs" / "ablations_results")
    p.add_argument("--markdown", type=Path, default=ROOT / "docs" / "ablations.md")
    p.add_argument("--report-only", action="store_true", help="only rebuild the markdown and plot")
    p.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="TEXT",
        help="train only the settings whose label contains one of these (e.g. UniDir 'image first')",
    )
    args = p.parse_args(argv)
    if args.jobs < 1 or args.steps < 1:
        p.error("--jobs and --steps must be >= 1")
    if not args.report_only:
        sweep(args)
    print(report(args))


if __name__ == "__main__":
    main()
