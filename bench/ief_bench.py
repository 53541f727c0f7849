"""The cost of a natural-gradient step: iEF, EF and SF vs AdamW, step time and peak memory.

    python -m bench.ief_bench --out docs/benchmarks_ief.md     # what `make bench` should run
    python -m bench.ief_bench --quick                          # seconds; checks the pipeline only

For each batch size (default 16 and 32) every variant trains a fresh model (same seed, same
batches from the project's LMDataModule, QAT at `--bits`) with a bare loop: AdamW does forward,
backward, step, zero_grad; iEF / EF / SF do `natural_step(x, y)` (qat_lab.optim.ief), which is
their forward and backward. `--warmup` untimed steps, then `--steps` timed ones; repeats are
interleaved across variants and the median is reported with the min-max spread.

Peak memory is measured in a fresh subprocess per (variant, batch size): the growth of the peak
RSS over the first `--mem-steps` steps, beyond what the process held after building the model
and loading the data (Linux: freed heap returned with malloc_trim, the kernel's peak mark VmHWM
reset through /proc/self/clear_refs, then read again after the steps). That is the memory a step needs on top of the weights,
including the allocator's cached blocks; it is set beside the analytic estimate that the
optimiser checks against `optim.memory_budget_mb` (qat_lab.optim.ief.memory_estimate).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from bench.run import machine as bench_machine

MAKE_ARGS = ["--out", "docs/benchmarks_ief.md"]
VARIANTS = ("adamw", "ief", "ef", "sf")
TARGET = 3.0
"""iEF step at most TARGET x an AdamW step on the default CPU preset (at the default batch size)."""
MB = 2**20


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.ief_bench", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, help="write the Markdown report here (default: print only)")
    p.add_argument("--preset", default="cpu-xs", help="model preset (default cpu-xs, the default CPU preset)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32], help="default: 16 32")
    p.add_argument("--seq-len", type=int, default=128, help="default 128")
    p.add_argument("--bits", type=int, default=6, help="QAT bit-width of every run (default 6; 16 = no QAT)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before each window (default 2)")
    p.add_argument("--steps", type=int, default=6, help="timed steps per window (default 6)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved windows per variant; median (default 3)")
    p.add_argument("--mem-steps", type=int, default=2, help="steps run for the peak-memory measurement (default 2)")
    p.add_argument("--quick", action="store_true", help="1 warmup + 1 timed step, 1 repeat, batch 4 and 8")
    p.add_argument("--measure-memory", nargs=2, metavar=("VARIANT", "BATCH"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.warmup, args.steps, args.repeats, args.mem_steps, args.batch_sizes = 1, 1, 1, 1, [4, 8]
    return args


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- the runs ------------------------------------------------------------------------------------

def compose(args: argparse.Namespace, variant: str, batch_size: int):
    """The RunSpec of `qatlab model=<preset> optim=<variant> bits=<bits> data.batch_size=<b>`."""
    import hydra

    from qat_lab.config import build_spec

    overrides = [f"model={args.preset}", f"optim={variant}", f"bits={args.bits}", f"data.batch_size={batch_size}",
                 f"data.seq_len={args.seq_len}", "logger=none", "trainer.accelerator=cpu"]
    with hydra.initialize_config_module(config_module="qat_lab.conf", version_base="1.3"):
        return build_spec(hydra.compose("config", overrides=overrides))


class Loop:
    """A fresh model + optimiser for one spec; `step(x, y)` is one training step."""

    def __init__(self, spec, vocab_size: int):
        from qat_lab.models.gpt import GPT
        from qat_lab.optim import build_optimisers
        from qat_lab.quant import apply_qat

        torch.manual_seed(spec.seed)
        self.spec = spec
        self.model = GPT(spec.model, vocab_size)
        apply_qat(self.model, spec.quant)
        self.model.train()
        self.opts = build_optimisers(self.model, spec.optim, spec.lr_mult)
        self.t = 0

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        from qat_lab.models.gpt import lm_loss
        from qat_lab.optim import apply_step_hparams

        apply_step_hparams(self.opts, self.t, self.spec.schedule.multiplier(self.t, self.spec.trainer.steps))
        self.t += 1
        if getattr(self.opts[0], "needs_batch", False):
            return float(self.opts[0].natural_step(x, y))
        loss = lm_loss(self.model(x), y)
        loss.backward()
        for opt in self.opts:
            opt.step()
        for opt in self.opts:
            opt.zero_grad(set_to_none=True)
        return float(loss.detach())


def batches(spec, n: int) -> tuple[Any, list[tuple[torch.Tensor, torch.Tensor]]]:
    from qat_lab.data import LMDataModule

    data = LMDataModule(spec.data, n, spec.seed)
    data.setup()
    return data, list(data.train_dataloader())[:n]


def time_window(loop: Loop, data: list, warmup: int, steps: int) -> tuple[float, float]:
    for x, y in data[:warmup]:
        loop.step(x, y)
    start = time.perf_counter()
    for x, y in data[warmup:warmup + steps]:
        loss = loop.step(x, y)
    return (time.perf_counter() - start) / steps, loss


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def reset_peak_rss() -> int:
    """Give freed heap back to the OS, reset the kernel's peak-RSS mark (Linux), return RSS bytes."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    return _status_kb("VmRSS") * 1024


def measure_memory(args: argparse.Namespace, variant: str, batch_size: int) -> dict[str, float]:
    """Runs in its own process: peak-RSS growth over the first steps, and the analytic estimate."""
    spec = compose(args, variant, batch_size)
    data, bs = batches(spec, args.mem_steps)
    loop = Loop(spec, data.vocab_size)
    before = reset_peak_rss()
    for x, y in bs:
        loop.step(x, y)
    after = _status_kb("VmHWM") * 1024
    out = {"measured_mb": (after - before) / MB, "estimate_mb": None, "jacobian_mb": None,
           "params": sum(p.numel() for p in loop.model.parameters())}
    opt = loop.opts[0]
    if getattr(opt, "needs_batch", False):
        est = opt.memory_estimate(batch_size, args.seq_len)
        out.update(estimate_mb=est["total"] / MB, jacobian_mb=est["jacobian"] / MB)
    return out


def memory_in_subprocess(args: argparse.Namespace, variant: str, batch_size: int) -> dict[str, float]:
    cmd = [sys.executable, "-m", "bench.ief_bench", "--measure-memory", variant, str(batch_size),
           "--preset", args.preset, "--seq-len", str(args.seq_len), "--bits", str(args.bits),
           "--mem-steps", str(args.mem_steps)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        raise RuntimeError(f"memory measurement of {variant} at batch {batch_size} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def measure(args: argparse.Namespace) -> dict[str, Any]:
    load = [os.getloadavg()[0]]
    specs = {(b, v): compose(args, v, b) for b in args.batch_sizes for v in VARIANTS}
    n = args.warmup + args.steps
    data = {b: batches(specs[b, "adamw"], n) for b in args.batch_sizes}
    times: dict[tuple[int, str], list[float]] = {k: [] for k in specs}
    losses: dict[tuple[int, str], float] = {}
    for r in range(args.repeats):
        for b in args.batch_sizes:
            for v in VARIANTS:
                loop = Loop(specs[b, v], data[b][0].vocab_size)
                s, losses[b, v] = time_window(loop, data[b][1], args.warmup, args.steps)
                times[b, v].append(s)
                log(f"repeat {r + 1}/{args.repeats}  batch {b:3d}  {v:6s} {1e3 * s:9.1f} ms/step")
    load.append(os.getloadavg()[0])
    mem = {}
    for b in args.batch_sizes:
        for v in VARIANTS:
            mem[b, v] = memory_in_subprocess(args, v, b)
            log(f"memory  batch {b:3d}  {v:6s} {mem[b, v]['measured_mb']:8.1f} MB")
    rows = []
    for b in args.batch_sizes:
        base = statistics.median(times[b, "adamw"])
        for v in VARIANTS:
            t = times[b, v]
            rows.append({"batch": b, "variant": v, "ms": 1e3 * statistics.median(t), "ms_min": 1e3 * min(t),
                         "ms_max": 1e3 * max(t), "ratio": statistics.median(t) / base, "loss": losses[b, v], **mem[b, v]})
    default_batch = 32 if 32 in args.batch_sizes else max(args.batch_sizes)
    ief_ratio = next(r["ratio"] for r in rows if r["batch"] == default_batch and r["variant"] == "ief")
    return {"rows": rows, "load": load, "default_batch": default_batch, "ief_ratio": ief_ratio,
            "params": rows[0]["params"], "verdict": "PASS" if ief_ratio <= TARGET else "MISS"}


# --- reporting -----------------------------------------------------------------------------------

def machine() -> str:
    m = bench_machine()
    return f"{m['cpu']}, {m['cores']} cores; torch {m['torch']} ({m['threads']}), Python {m['python']}"


def table(res: dict) -> list[str]:
    out = ["| batch | optimiser | ms/step (min-max) | / AdamW | peak RSS growth (MB) | estimate (MB) | of which J (MB) |",
           "|--:|---|--:|--:|--:|--:|--:|"]
    for r in res["rows"]:
        est = "-" if r["estimate_mb"] is None else f"{r['estimate_mb']:.0f}"
        jac = "-" if r["jacobian_mb"] is None else f"{r['jacobian_mb']:.1f}"
        out.append(f"| {r['batch']} | {r['variant']} | {r['ms']:.0f} ({r['ms_min']:.0f}-{r['ms_max']:.0f}) | "
                   f"{r['ratio']:.2f} | {r['measured_mb']:.0f} | {est} | {jac} |")
    return out


def command(argv: list[str]) -> str:
    return " ".join(["python -m bench.ief_bench", *map(shlex.quote, argv)])


def markdown(res: dict, args: argparse.Namespace, argv: list[str]) -> str:
    from qat_lab import records as runs

    git = runs.git_state()
    lines = ["# Benchmark: iEF / EF / SF step cost", "",
             "Step time and memory of the natural-gradient optimisers (qat_lab.optim.ief, docs/ief.md)",
             "relative to AdamW. Generated by bench/ief_bench.py; do not edit by hand.", ""]
    if args.quick:
        lines += ["> **Quick mode**: 1 timed step, 1 repeat, tiny batches. The numbers mean nothing.", ""]
    lines += [
        f"- Date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Command: `{command(argv)}`",
        f"- Machine: {machine()}; load average {res['load'][0]:.2f} before, {res['load'][1]:.2f} after the timing",
        f"- git {git['sha'][:12]}{' (dirty)' if git['dirty'] else ''}",
        f"- Model: {args.preset}, {res['params']:,} trainable parameters (P, embedding included); "
        f"QAT bits={args.bits}; seq_len {args.seq_len}; every optimiser at its conf/optim default",
        f"- Timing: {args.warmup} warmup + {args.steps} timed steps per window, median of {args.repeats} interleaved repeats",
        "",
        *table(res),
        "",
        f"**Target: an iEF step at most {TARGET:g}x an AdamW step on the default CPU preset "
        f"(batch {res['default_batch']}): {res['ief_ratio']:.2f}x, {res['verdict']}.**",
        "",
        "## How measured",
        "",
        "- **Step.** AdamW: forward, `lm_loss`, backward, `step()`, `zero_grad()`. iEF / EF / SF:",
        "  `natural_step(x, y)`, which computes the per-sample gradients (torch.func vmap over grad,",
        "  in chunks of `optim.chunk_size`), the float64 Gram matrix and solve, and the update. SF also",
        "  does one ordinary forward + backward (the gradient g and the logits it samples labels from).",
        "  Both kinds read the loss every step, as the training module does. No Lightning, no periodic",
        "  evaluation: the same bare loop for every optimiser.",
        "- **Peak RSS growth**: a fresh `python -m bench.ief_bench --measure-memory VARIANT BATCH`",
        "  process builds the model and loads the data, returns freed heap to the OS (`malloc_trim`),",
        "  resets the kernel's peak-RSS mark (`/proc/self/clear_refs`), runs",
        f"  {args.mem_steps} step(s), and reads the peak (`VmHWM`). The difference from the RSS before the",
        "  steps is what training adds to the process's peak resident memory, allocator caches and",
        "  torch's thread pools included (AdamW's row also counts its two moment buffers).",
        "- **Estimate**: `NaturalGradient.memory_estimate` (docs/ief.md, \"Memory\"), the figure",
        "  compared with `optim.memory_budget_mb` before the first step; *of which J* is its Jacobian",
        "  term R x P x 4 bytes (R = batch, x sf_samples for SF).",
        "- The machine is shared (2 cores): the min-max spread and the load averages show how noisy",
        "  a run was. Ratios are of medians taken in the same interleaved rounds.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    if args.measure_memory:
        variant, b = args.measure_memory
        print(json.dumps(measure_memory(args, variant, int(b))))
        return 0
    res = measure(args)
    report = markdown(res, args, argv)
    print("\n".join(table(res)))
    print(f"iEF / AdamW at batch {res['default_batch']}: {res['ief_ratio']:.2f} (target <= {TARGET:g}): {res['verdict']}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
