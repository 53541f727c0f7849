"""Where a CPU training step's time goes, and what the model's cheaper elementwise ops buy.

    python -m bench.profile_step                               # profile cpu-xs, then before/after
    python -m bench.profile_step --repeats 9                   # more interleaved repeats
    python -m bench.profile_step --no-compare                  # the profile only
    python -m bench.profile_step --profile cpu-s --presets cpu-s

1. **Profile.** The bare loop's work (forward + lm_loss, backward, every optimiser's step and
   zero_grad; bench/loops.py) on `--profile` at bits 16 and 6, before and after (below),
   `--profile-steps` steps after
   warm-up, under torch.profiler with input shapes. Every op's self CPU time per step, by phase
   (forward / backward / optimiser) and category (matmul, attention kernel, the rest), then the
   top ops grouped by op and input shapes. "framework" is time in no op: Python, the autograd
   engine's bookkeeping. The profiler's own overhead inflates small ops, so these are proportions,
   not the speed.
2. **Before/after.** bench.loops.bare_loop (the same loop bench/run.py times) with the current
   model ("after") and with the plain formulation of RMSNorm, rotary and ReLU^2 patched back in
   ("before": models/gpt.py as it was, copied below; tests/test_model_numerics.py holds that both
   compute the same), for every preset and bit-width, interleaved (before, after, before, after,
   ...). Median ms/step over repeats with the min-max spread; tokens/s; the share of the measured
   fp32 matmul rate. Both must end on the same train loss (they are the same arithmetic, bit for
   bit; checked to rel 1e-6), else the exit code is 1.

On a shared machine the timings are noisy: the load average and a fixed pure-Python loop's CPU
seconds (bench.analysis_bench.calibration, ~0.4 s idle) are printed before and after.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile, record_function

from bench import loops
from bench.analysis_bench import calibration
from qat_lab.models import gpt
from qat_lab.models.gpt import GPT, lm_loss
from qat_lab.optim import apply_step_hparams, build_optimisers
from qat_lab.quant import apply_qat
from qat_lab.train import quiet_lightning

LOSS_RTOL = 1e-6
"""Before and after end on the same train loss to this (in fact exactly: tests/test_model_numerics.py)."""

PHASES = ("forward", "backward", "optimiser")
MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addmv", "aten::mv"}


# --- "before": the plain formulation, as models/gpt.py had it ------------------------------------

def _plain_rms_norm(self, x: torch.Tensor) -> torch.Tensor:
    w = self.weight if self.weight is None or self.weight.dtype == x.dtype else self.weight.to(x.dtype)
    return F.rms_norm(x, self.normalized_shape, w, self.eps)


def _plain_tables(rotary: gpt.Rotary, seq_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    cache = getattr(rotary, "_plain_cache", None)
    stale = cache is not None and cache[2].is_inference() and not torch.is_inference_mode_enabled()
    if stale or cache is None or cache[0] != seq_len or cache[1] != device:
        t = torch.arange(seq_len, device=device, dtype=torch.float32)
        freqs = torch.outer(t, rotary.inv_freq.to(device))
        rotary._plain_cache = cache = (seq_len, device, freqs.cos()[None, :, None, :], freqs.sin()[None, :, None, :])
    return cache[2], cache[3]


def _plain_rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)


def _plain_attention(self, x: torch.Tensor) -> torch.Tensor:
    B, T, _ = x.shape
    q = self.q_norm(self.q(x).view(B, T, self.n_head, self.hd))
    k = self.k_norm(self.k(x).view(B, T, self.n_kv, self.hd))
    v = self.v(x).view(B, T, self.n_kv, self.hd)
    cos, sin = _plain_tables(self.rotary, T, x.device)
    q, k = _plain_rotate(q, cos, sin), _plain_rotate(k, cos, sin)
    y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                       is_causal=True, enable_gqa=self.n_kv != self.n_head)
    return self.proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.hd))


def _plain_mlp(self, x: torch.Tensor) -> torch.Tensor:
    return self.proj(F.relu(self.fc(x)).square())


@contextmanager
def plain_formulation() -> Iterator[None]:
    """Run models.gpt with the formulation before the change (restored on exit)."""
    patches = [(gpt.RMSNorm, "forward", _plain_rms_norm), (gpt.Attention, "forward", _plain_attention),
               (gpt.MLP, "forward", _plain_mlp)]
    saved = [(cls, name, cls.__dict__[name]) for cls, name, _ in patches]
    try:
        for cls, name, fn in patches:
            setattr(cls, name, fn)
        yield
    finally:
        for cls, name, fn in saved:
            setattr(cls, name, fn)


# --- 1. profile -----------------------------------------------------------------------------------

def _category(name: str) -> str:
    if name in MATMUL_OPS:
        return "matmul"
    if "scaled_dot_product" in name:
        return "attention kernel"
    if not name.startswith("aten::") or name.startswith(("autograd::", "Optimizer.")) or name in PHASES:
        return "framework"
    return "elementwise, reductions, copies"


def profile_step(spec, data, steps: int, warmup: int = 3) -> dict:
    """Self CPU time per step of every op, by phase and by (op, input shapes)."""
    torch.manual_seed(spec.seed)
    model = GPT(spec.model, data.vocab_size)
    apply_qat(model, spec.quant)
    model.train()
    optimisers = build_optimisers(model, spec.optim, spec.lr_mult)
    batches = list(loops._loader(data, warmup + steps))

    def step(i: int) -> None:
        x, y = batches[i]
        apply_step_hparams(optimisers, i, spec.schedule.multiplier(i, spec.trainer.steps))
        with record_function("forward"):
            loss = lm_loss(model(x), y)
        with record_function("backward"):
            loss.backward()
        with record_function("optimiser"):
            for opt in optimisers:
                opt.step()
            for opt in optimisers:
                opt.zero_grad(set_to_none=True)
        float(loss.detach())

    for i in range(warmup):
        step(i)
    t = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for i in range(warmup, warmup + steps):
            step(i)
    wall = (time.perf_counter() - t) / steps

    by_phase: dict[tuple[str, str], float] = defaultdict(float)
    by_op: dict[tuple[str, str], list] = {}
    for ev in prof.events():
        phase, parent = None, ev
        while parent is not None:
            if parent.name in PHASES:
                phase = parent.name
            parent = parent.cpu_parent
        if phase is None or ev.name in PHASES:
            continue
        self_us = ev.self_cpu_time_total / steps
        cat = _category(ev.name)
        by_phase[phase, cat] += self_us
        if cat != "framework":
            key = (ev.name, str(ev.input_shapes))
            row = by_op.setdefault(key, [0.0, 0, set()])
            row[0] += self_us
            row[1] += 1
            row[2].add(phase)
    return {"wall_ms": 1e3 * wall, "by_phase": dict(by_phase), "by_op": by_op, "steps": steps}


def _shapes(s: str, width: int = 44) -> str:
    s = s.replace(" ", "")
    return s if len(s) <= width else s[:width - 3] + "..."


def profile_report(p: dict, top: int) -> str:
    total = sum(p["by_phase"].values())
    cats = ("matmul", "attention kernel", "elementwise, reductions, copies", "framework")
    lines = [f"profiled: {p['wall_ms']:.1f} ms/step wall under the profiler; {total / 1e3:.1f} ms/step in the "
             f"table (self CPU time of the main thread)", "",
             "| phase | " + " | ".join(cats) + " | total |", "|---|" + "--:|" * (len(cats) + 1)]
    for phase in (*PHASES, None):
        cells = [sum(v for (ph, c), v in p["by_phase"].items() if c == cat and phase in (None, ph)) for cat in cats]
        name = phase or "**step**"
        lines.append(f"| {name} | " + " | ".join(f"{c / 1e3:.1f} ({100 * c / total:.0f}%)" for c in cells)
                     + f" | {sum(cells) / 1e3:.1f} ({100 * sum(cells) / total:.0f}%) |")
    lines += ["", f"top {top} ops by self CPU time (ms per step; calls per step):", "",
              "| op | input shapes | phase | ms/step | % | calls |", "|---|---|---|--:|--:|--:|"]
    rows = sorted(p["by_op"].items(), key=lambda kv: -kv[1][0])[:top]
    for (name, shapes), (us, n, phases) in rows:
        ph = "+".join(x[0] for x in PHASES if x in phases)  # f, b, o
        lines.append(f"| {name.removeprefix('aten::')} | {_shapes(shapes)} | {ph} | {us / 1e3:.2f} | "
                     f"{100 * us / total:.1f} | {n / p['steps']:g} |")
    return "\n".join(lines)


# --- 2. before/after ------------------------------------------------------------------------------

def compare(presets: list[str], bits: list[int], repeats: int, warmup: int, steps: int, data) -> dict:
    specs = {(p, b): loops.compose(p, bits=b) for p in presets for b in bits}
    runs: dict[tuple[str, int, str], list[loops.Timing]] = defaultdict(list)
    for r in range(repeats):
        for (p, b), spec in specs.items():
            for arm in ("before", "after"):
                with plain_formulation() if arm == "before" else _nothing():
                    t = loops.bare_loop(spec, data, warmup, steps)
                runs[p, b, arm].append(t)
                ms = 1e3 * t.seconds / t.steps
                print(f"repeat {r + 1}/{repeats}  {p:7s} bits={b:<2d} {arm:6s} {ms:8.1f} ms/step", file=sys.stderr,
                      flush=True)
    return {"specs": specs, "runs": dict(runs)}


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def compare_report(res: dict, data, peak: float) -> tuple[str, bool]:
    tokens = data.cfg.batch_size * data.cfg.seq_len
    lines = ["| preset | bits | before ms/step | after ms/step | after/before | before tok/s | after tok/s | "
             "before % of matmul rate | after % | same loss |", "|---|--:|--:|--:|--:|--:|--:|--:|--:|---|"]
    ok = True
    for (p, b), spec in res["specs"].items():
        fpt = spec.model.flops_per_token(data.vocab_size, spec.data.seq_len)
        med, cell = {}, {}
        for arm in ("before", "after"):
            ms = [1e3 * t.seconds / t.steps for t in res["runs"][p, b, arm]]
            med[arm] = statistics.median(ms)
            cell[arm] = f"{med[arm]:.1f} ({min(ms):.1f}-{max(ms):.1f})"
        la, lb = res["runs"][p, b, "before"][0].final_loss, res["runs"][p, b, "after"][0].final_loss
        same = math.isclose(la, lb, rel_tol=LOSS_RTOL)
        ok &= same
        rate = {arm: fpt * tokens / (med[arm] / 1e3) / peak for arm in med}
        lines.append(f"| {p} | {b} | {cell['before']} | {cell['after']} | {med['after'] / med['before']:.3f} | "
                     f"{tokens / med['before'] * 1e3:,.0f} | {tokens / med['after'] * 1e3:,.0f} | "
                     f"{100 * rate['before']:.1f}% | {100 * rate['after']:.1f}% | "
                     f"{'yes' if same else 'NO'} ({la:.6f} / {lb:.6f}) |")
    return "\n".join(lines), ok


def machine_state() -> str:
    return f"load average {os.getloadavg()[0]:.2f}, calibration loop {calibration():.2f} s CPU (~0.4 s idle)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.profile_step", description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="cpu-xs", metavar="MODEL", help="preset to profile (default cpu-xs)")
    ap.add_argument("--profile-steps", type=int, default=5, help="profiled steps (default 5)")
    ap.add_argument("--top", type=int, default=20, help="ops listed (default 20)")
    ap.add_argument("--presets", nargs="+", default=["cpu-xs", "cpu-s"], help="before/after presets")
    ap.add_argument("--bits", nargs="+", type=int, default=[16, 6], help="bit-widths (default 16 6)")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved before/after repeats (default 5)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per run (default 10)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--no-compare", action="store_true", help="the profile only")
    args = ap.parse_args(argv)
    quiet_lightning()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {machine_state()}")
    data = loops.load_data(loops.compose(args.profile))
    # The first two profiles in a process show the elementwise ops 1.5-2x slower than later ones
    # (the same ops, shapes and order; measured): two are thrown away, so all compare warm.
    for arm in ("before", "after"):
        with plain_formulation() if arm == "before" else _nothing():
            profile_step(loops.compose(args.profile, bits=args.bits[0]), data, 3)
    for b in args.bits:
        spec = loops.compose(args.profile, bits=b)
        for arm in ("before", "after"):
            print(f"\n## {args.profile}, bits={b}, {arm}: op breakdown\n")
            with plain_formulation() if arm == "before" else _nothing():
                p = profile_step(spec, data, args.profile_steps)
            print(profile_report(p, args.top))
    if args.no_compare:
        return 0

    peak = loops.matmul_peak(2048, 7)
    res = compare(args.presets, args.bits, args.repeats, args.warmup, args.steps, data)
    table, ok = compare_report(res, data, peak)
    print(f"\n## before/after: median of {args.repeats} interleaved repeats, {args.steps} timed steps each "
          f"(min-max); fp32 matmul rate {peak / 1e9:.1f} GFLOP/s\n")
    print(table)
    print(f"\nafter the runs: {machine_state()}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
