"""`make bench`: training throughput, MFU, the cost of QAT, Muon vs AdamW, Lightning vs a bare loop.

    python -m bench.run --out docs/benchmarks.md     # what `make bench` runs (repo root as cwd)
    python -m bench.run --quick --out /tmp/b.md      # seconds; checks the pipeline, not the speed
    python -m bench.run --presets cpu-s --steps 40   # one preset, longer windows

Every variant of every preset is run `--repeats` times; the repeats are interleaved (repeat 1 of
every variant, then repeat 2, ...) so that a slow patch on a shared machine hits all variants alike
rather than one of them. Each figure is the median over repeats; the min-max spread is reported
next to it so a noisy measurement is visible as such.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shlex
import statistics
import sys
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import torch

from bench import loops
from qat_lab.train import quiet_lightning

LOSS_RTOL = 1e-4
"""Bare and Lightning final losses agree to this (summation order may differ between runs)."""

MAKE_ARGS = ["--out", "docs/benchmarks.md"]
"""The arguments `make bench` passes; with exactly these the report names `make bench` as its command."""


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    loop: str  # "bare" or "lightning"
    bits: int
    optim: str


# Muon is the project's default optimiser, so the Muon runs are the baselines; the AdamW run only
# answers "what does Muon cost per step".
VARIANTS = (
    Variant("bare-fp16", "bare, FP16 baseline (bits=16)", "bare", 16, "muon"),
    Variant("bare-qat6", "bare, QAT6 (bits=6)", "bare", 6, "muon"),
    Variant("lightning-fp16", "Lightning, FP16 baseline (bits=16)", "lightning", 16, "muon"),
    Variant("lightning-qat6", "Lightning, QAT6 (bits=6)", "lightning", 6, "muon"),
    Variant("bare-fp16-adamw", "bare, FP16 baseline, optim=adamw", "bare", 16, "adamw"),
)


@dataclass(frozen=True)
class Check:
    name: str
    numerator: str
    denominator: str
    limit: float | None
    """Pass if step-time ratio <= limit; None = reported without a target."""


CHECKS = (
    Check("QAT cost: QAT6 / FP16 (bare)", "bare-qat6", "bare-fp16", 1.15),
    Check("QAT cost: QAT6 / FP16 (Lightning)", "lightning-qat6", "lightning-fp16", 1.15),
    Check("Lightning / bare (FP16)", "lightning-fp16", "bare-fp16", 1.10),
    Check("Lightning / bare (QAT6)", "lightning-qat6", "bare-qat6", 1.10),
    Check("Muon / AdamW (bare, FP16)", "bare-fp16", "bare-fp16-adamw", None),
)


QUICK = dict(presets=["cpu-xs"], warmup=1, steps=2, repeats=1, matmul_size=256, matmul_reps=3)
"""--quick's defaults: enough to exercise every code path, far too little to measure anything."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, help="write the Markdown report here (default: print only)")
    # cpu-m is left out of the default: a Muon step takes seconds there on 2 cores (the optimiser
    # alone; see "optimizer ms/step"), which adds ~10 minutes. `--presets cpu-xs cpu-s cpu-m` runs it.
    p.add_argument("--presets", nargs="+", default=["cpu-xs", "cpu-s"], metavar="MODEL",
                   help="model presets (conf/model/*.yaml); default: cpu-xs cpu-s")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before each timed window (default 3)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per window (default 10)")
    p.add_argument("--repeats", type=int, default=3, help="runs per variant; the median is reported (default 3)")
    p.add_argument("--matmul-size", type=int, default=2048, help="side of the square fp32 matmul for the peak (default 2048)")
    p.add_argument("--matmul-reps", type=int, default=7, help="timed matmuls for the peak; median (default 7)")
    p.add_argument("--quick", action="store_true",
                   help="checks the pipeline in seconds: defaults become cpu-xs, 1 warmup + 2 timed steps, "
                        "1 repeat, a 256 matmul (flags given explicitly still win)")
    if "--quick" in argv:
        p.set_defaults(**QUICK)
    args = p.parse_args(argv)
    for key in ("steps", "repeats", "matmul_size", "matmul_reps"):
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be at least 1")
    if args.warmup < 0:
        p.error("--warmup must be non-negative")
    known = sorted(f.name.removesuffix(".yaml") for f in (resources.files("qat_lab.conf") / "model").iterdir()
                   if f.name.endswith(".yaml"))
    unknown = [m for m in args.presets if m not in known]
    if unknown:
        p.error(f"unknown preset {unknown[0]}; known: {' '.join(known)}")
    return args


# --- measuring ---------------------------------------------------------------------------------

def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_variants(args: argparse.Namespace, specs: dict, data) -> dict[tuple[str, str], list[loops.Timing]]:
    """Every (preset, variant) `args.repeats` times, repeats outermost (see the module docstring)."""
    times: dict[tuple[str, str], list[loops.Timing]] = {key: [] for key in specs}
    for r in range(args.repeats):
        for preset in args.presets:
            for v in VARIANTS:
                run = loops.bare_loop if v.loop == "bare" else loops.lightning_loop
                t = run(specs[preset, v.key], data, args.warmup, args.steps)
                times[preset, v.key].append(t)
                log(f"repeat {r + 1}/{args.repeats}  {preset:7s} {v.key:16s} {1e3 * t.seconds / t.steps:9.1f} ms/step")
    return times


def summarise(preset: str, spec, runs: dict[str, list[loops.Timing]], data, peak: float,
              args: argparse.Namespace) -> dict[str, Any]:
    """One preset's table rows, target checks, loop agreement and periodic-evaluation cost."""
    tokens_per_step = spec.data.batch_size * spec.data.seq_len
    fpt = spec.model.flops_per_token(data.vocab_size, spec.data.seq_len)

    rows = {}
    for v in VARIANTS:
        step_s = [t.seconds / t.steps for t in runs[v.key]]
        s = statistics.median(step_s)
        opt = [t.optimizer_seconds / t.steps for t in runs[v.key] if t.optimizer_seconds is not None]
        rows[v.key] = {
            "ms_per_step": 1e3 * s, "ms_min": 1e3 * min(step_s), "ms_max": 1e3 * max(step_s),
            "tokens_per_s": tokens_per_step / s, "mfu": fpt * tokens_per_step / s / peak,
            "optimizer_ms": 1e3 * statistics.median(opt) if opt else None,
        }

    checks = []
    for c in CHECKS:
        ratio = rows[c.numerator]["ms_per_step"] / rows[c.denominator]["ms_per_step"]
        verdict = "-" if c.limit is None else ("PASS" if ratio <= c.limit else "MISS")
        checks.append({"name": c.name, "ratio": ratio, "limit": c.limit, "verdict": verdict})

    # Same seed, batches and optimisers: the two loops must end on the same loss, else the timing
    # comparison is not like for like.
    agreement = []
    for bare, lit in (("bare-fp16", "lightning-fp16"), ("bare-qat6", "lightning-qat6")):
        a, b = runs[bare][0].final_loss, runs[lit][0].final_loss
        agreement.append({"pair": f"{bare} / {lit}", "bare": a, "lightning": b,
                          "same": math.isclose(a, b, rel_tol=LOSS_RTOL)})

    # The evaluation passes switched off in the timed runs, costed at the project's default cadence.
    eval_spec = loops.compose(preset, periodic_eval=True)
    costs = loops.periodic_eval_costs(eval_spec, data, reps=1 if args.quick else 3)
    t = eval_spec.trainer
    every = {"grid_every": t.grid_every, "val_every": t.val_every, "curve_every": t.curve_every}
    per_step_s = {"grid": costs["grid_s"] / t.grid_every, "val": costs["val_s"] / t.val_every,
                  "curve": costs["curve_s"] / t.curve_every if t.curve_every else 0.0}
    step_s = rows["lightning-fp16"]["ms_per_step"] / 1e3
    # The strong-PTQ arms run once, after the last step: against a whole default run's training time.
    ptq = loops.strong_ptq_cost(eval_spec, data)
    run_s = eval_spec.trainer.steps * rows["lightning-fp16"]["ms_per_step"] / 1e3
    ptq["run_s"], ptq["pct_of_run"] = run_s, 100.0 * ptq["ptq_s"] / run_s

    return {
        "d_model": spec.model.d_model, "n_layer": spec.model.n_layer, "params_matmul": spec.model.matmul_params(data.vocab_size),
        "flops_per_token": fpt, "rows": rows, "checks": checks,
        "agreement": agreement, "final_step": args.warmup + args.steps - 1, "ptq": ptq,
        "eval": {**costs, **every, "val_batches": t.val_batches, "curve_batches": t.curve_batches,
                 "amortised_pct": 100.0 * sum(per_step_s.values()) / step_s,
                 "curve_pct": 100.0 * per_step_s["curve"] / step_s},
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    log(f"peak: fp32 matmul {args.matmul_size}x{args.matmul_size}, {args.matmul_reps} reps")
    peak = loops.matmul_peak(args.matmul_size, args.matmul_reps)
    log(f"  {peak / 1e9:.1f} GFLOP/s")

    # The schedule keeps a default run's length unless the run is longer (it only sets LR values).
    run_steps = max(loops.DEFAULT_RUN_STEPS, args.warmup + args.steps)
    specs = {(p, v.key): loops.compose(p, bits=v.bits, optim=v.optim, run_steps=run_steps)
             for p in args.presets for v in VARIANTS}
    data = loops.load_data(next(iter(specs.values())))  # corpus and batch shape are shared by every preset
    times = run_variants(args, specs, data)

    presets = {p: summarise(p, specs[p, "bare-fp16"], {v.key: times[p, v.key] for v in VARIANTS}, data, peak, args)
               for p in args.presets}
    return {"peak_flops": peak, "presets": presets, "seq_len": data.cfg.seq_len, "batch_size": data.cfg.batch_size,
            "tokens_per_step": data.cfg.batch_size * data.cfg.seq_len}


# --- reporting ---------------------------------------------------------------------------------

def machine() -> dict[str, str]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu, "cores": f"{usable} usable ({os.cpu_count()} logical)",
        "torch": torch.__version__, "threads": f"{torch.get_num_threads()} intra-op, {torch.get_num_interop_threads()} inter-op",
        "lightning": metadata.version("lightning"), "python": platform.python_version(),
    }


def command(argv: list[str]) -> str:
    if argv == MAKE_ARGS:
        return "make bench"
    return " ".join(["python -m bench.run", *map(shlex.quote, argv)])


def _fmt_ms(row: dict) -> str:
    return f"{row['ms_per_step']:.1f} ({row['ms_min']:.1f}-{row['ms_max']:.1f})"


def variant_table(p: dict) -> tuple[list[str], list[list[str]]]:
    headers = ["variant", "ms/step (min-max)", "tokens/s", "MFU", "optimizer ms/step"]
    rows = []
    for v in VARIANTS:
        r = p["rows"][v.key]
        opt = "-" if r["optimizer_ms"] is None else f"{r['optimizer_ms']:.1f}"
        rows.append([v.label, _fmt_ms(r), f"{r['tokens_per_s']:,.0f}", f"{100 * r['mfu']:.2f}%", opt])
    return headers, rows


def check_table(p: dict) -> tuple[list[str], list[list[str]]]:
    headers = ["check (step-time ratio)", "ratio", "target", "result"]
    rows = [[c["name"], f"{c['ratio']:.3f}", "-" if c["limit"] is None else f"<= {c['limit']:.2f}", c["verdict"]]
            for c in p["checks"]]
    return headers, rows


def eval_line(p: dict) -> str:
    e = p["eval"]
    passes = [("grid distance", e["grid_s"], e["grid_every"], ""),
              (f"quick validation ({e['val_batches']} batches)", e["val_s"], e["val_every"], ""),
              (f"loss curve `curve_loss` ({e['curve_batches']} batch)", e["curve_s"], e["curve_every"],
               f" (+{e['curve_pct']:.1f}% per step; target <= 5%)")]
    each = ", ".join(f"{name} {1e3 * s:.1f} ms every {every} steps{extra}" for name, s, every, extra in passes)
    return (f"Periodic evaluation, off in the timed runs: {each}: +{e['amortised_pct']:.1f}% per step at the "
            "default cadence, all three together.")


def ptq_line(p: dict) -> str:
    c = p["ptq"]
    return (f"Strong-PTQ arms at the end of a run (clip search + GPTQ at every PTQ bit-width, each evaluated on the "
            f"final validation set; calibration {c['calibration_batches']} batches): {c['ptq_s']:.2f} s "
            f"(Hessians {c['hessian_s']:.2f} s, clip {c['clip_s']:.2f} s, GPTQ {c['gptq_s']:.2f} s, evaluations "
            f"{c['eval_s']:.2f} s) = {c['pct_of_run']:.1f}% of a default {c['run_s']:.0f}-s training run "
            f"(target <= 10%).")


def agreement_line(p: dict) -> str:
    parts = [f"{a['pair']} {a['bare']:.5f} / {a['lightning']:.5f}" + ("" if a["same"] else " DIFFER")
             for a in p["agreement"]]
    return f"Same work check, train loss at step {p['final_step']}: " + "; ".join(parts) + "."


def text_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(headers), "  ".join("-" * w for w in widths), *map(line, rows)])


def md_table(headers: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" if i == 0 else "--:" for i in range(len(headers))) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def preset_heading(name: str, p: dict) -> str:
    return (f"{name} (d_model {p['d_model']}, {p['n_layer']} layers; {p['params_matmul']:,} matmul params, "
            f"{p['flops_per_token'] / 1e6:.2f} MFLOP/token)")


def console_report(res: dict) -> str:
    parts = [f"peak fp32 matmul: {res['peak_flops'] / 1e9:.1f} GFLOP/s;  "
             f"batch {res['batch_size']} x seq_len {res['seq_len']} = {res['tokens_per_step']} tokens/step"]
    for name, p in res["presets"].items():
        parts += ["", preset_heading(name, p), text_table(*variant_table(p)), "", text_table(*check_table(p)), eval_line(p),
                  ptq_line(p), agreement_line(p)]
    return "\n".join(parts)


def markdown_report(res: dict, args: argparse.Namespace, argv: list[str]) -> str:
    m = machine()
    git = git_sha()
    lines = [
        "# Benchmarks",
        "",
        "Training throughput of qat_lab on CPU: tokens/s, MFU, the cost of QAT, Muon vs AdamW, and the",
        "Lightning loop vs a bare PyTorch loop. Generated by bench/run.py; do not edit by hand.",
        "",
    ]
    if args.quick:
        lines += ["> **Quick mode** (`--quick`): 2 timed steps, 1 repeat, small matmul. It checks that the",
                  "> benchmark runs; the numbers below mean nothing.", ""]
    lines += [
        f"- Date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Command: `{command(argv)}`",
        f"- Machine: {m['cpu']}, {m['cores']} cores",
        f"- Software: torch {m['torch']} ({m['threads']} threads), lightning {m['lightning']}, "
        f"Python {m['python']}, git {git}",
        f"- Shape: batch {res['batch_size']} x seq_len {res['seq_len']} = {res['tokens_per_step']} tokens/step; "
        f"{args.warmup} warmup + {args.steps} timed steps per run, median of {args.repeats} "
        f"repeat{'s' if args.repeats != 1 else ''}",
        f"- Peak: fp32 matmul {args.matmul_size}x{args.matmul_size} = **{res['peak_flops'] / 1e9:.1f} GFLOP/s** "
        "(the MFU denominator)",
        "",
    ]
    for name, p in res["presets"].items():
        lines += [f"## {preset_heading(name, p)}", "", md_table(*variant_table(p)), "", md_table(*check_table(p)), "",
                  eval_line(p), "", ptq_line(p), "", agreement_line(p), ""]
    lines += [
        "## How measured",
        "",
        "- **Runs.** Each variant is a fresh model (same seed, so the same initial weights) trained on",
        "  the same batches (the project's LMDataModule from step 0) with the same optimisers",
        "  (`build_optimisers`) and per-step hyperparameters (`apply_step_hparams`, the run's schedule).",
        "  The first `--warmup` steps are not timed; the next `--steps` are timed with",
        "  `time.perf_counter`. Repeats are interleaved across variants; each figure is the median over",
        "  repeats, with the min-max spread in brackets. torch's thread count is left at its default.",
        "- **Bare loop** (bench/loops.py `bare_loop`): iterate the DataLoader; `apply_step_hparams`,",
        "  forward, `lm_loss`, `backward`, every optimiser's `step()` then `zero_grad()`, read the loss.",
        "  *optimizer ms/step* is the part spent in `step()`/`zero_grad()`.",
        "- **Lightning loop** (`lightning_loop`): the setup of `qat_lab.train.train` with `logger=none`:",
        "  `QATLanguageModel`, the same `TrainingMonitor` (train.make_monitor: grid probe, quick",
        "  validation, divergence rules, metrics.csv in a temp dir) and the same `L.Trainer`",
        "  (train.make_trainer). The window runs from `on_train_batch_start` of the first timed step to",
        "  `on_train_batch_end` of the last, stamped by callbacks placed first and last in the list, so",
        "  Trainer construction and fit start-up are excluded and every per-step hook is included.",
        "- **Same work.** Both loops must end on the same train loss (relative tolerance",
        f"  {LOSS_RTOL:g}); the line under each table shows it, and the command exits 1 otherwise.",
        "- **Periodic evaluation** (grid distance every `trainer.grid_every` steps, quick validation",
        "  every `trainer.val_every`, the loss curve every `trainer.curve_every`) is switched off in the",
        "  timed runs (`trainer.grid_every=0 trainer.val_every=0 trainer.curve_every=0 warmdown=0`): it is",
        "  evaluation at fixed steps that the bare loop does not",
        "  do, and whether a window happened to contain one would decide the ratio. Its cost is timed",
        "  separately (line under each table), amortised at the default cadence.",
        "- **Variants.** FP16 baseline = `bits=16` (no fake quantisation; fp32 on CPU); QAT6 = `bits=6`",
        "  (STE fake quantisation of every block matrix). Optimiser: `optim=muon` (the default) unless",
        "  the row says `optim=adamw`. All runs use `trainer.accelerator=cpu`.",
        "- **MFU** = FLOPs/token x tokens/s / peak, with FLOPs/token = `GPTConfig.flops_per_token(vocab,",
        "  seq_len)` = 6 x matmul params + 12 x layers x d_model x seq_len.",
        "  The same model FLOPs are used for every variant, so fake quantisation and optimiser work",
        "  (Muon's Newton-Schulz iterations) lower MFU rather than count as useful work.",
        "- **Peak** = median over `--matmul-reps` of one fp32 `torch.matmul` of two square",
        "  `--matmul-size` matrices (2n^3 FLOPs), after two warmup calls.",
        "- **Targets.** QAT6 within 15% of FP16 (ratio <= 1.15); Lightning within 10% of bare",
        "  (ratio <= 1.10). Muon / AdamW has no target. Ratios are of median ms/step.",
        "",
    ]
    return "\n".join(lines)


def git_sha() -> str:
    from qat_lab import records as runs

    state = runs.git_state()
    sha = state["sha"][:12] if state["sha"] != "unknown" else "unknown"
    return sha + (" (dirty)" if state["dirty"] else "")


def trustworthy(res: dict) -> bool:
    """Every figure finite and positive, and both loops did the same work."""
    values = [res["peak_flops"]]
    if not all(a["same"] for p in res["presets"].values() for a in p["agreement"]):
        return False
    for p in res["presets"].values():
        for r in p["rows"].values():
            values += [r["ms_per_step"], r["tokens_per_s"], r["mfu"]]
    return all(math.isfinite(v) and v > 0 for v in values)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    quiet_lightning()
    # Once-per-fit noise with nothing to act on: a Lightning 2.6 / torch 2.13 deprecation, and the
    # hint that `srun` exists (the bench is one process, never a Slurm job).
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*`srun` command is available.*")
    res = measure(args)
    print(console_report(res), flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(markdown_report(res, args, argv))
        log(f"wrote {args.out}")
    return 0 if trustworthy(res) else 1


if __name__ == "__main__":
    sys.exit(main())
