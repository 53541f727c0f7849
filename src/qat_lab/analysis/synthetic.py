"""Synthetic sweeps with planted answers: schema-v1 run records + metrics.csv, no training.

Used by the tests (does the analysis recover what was planted?) and by bench/analysis_bench.py
(how long do 2,000 records take?). What is planted:

- final loss  L = base(N) + curvature * (ln(w / optimum))^2 + P_b(N) + seed effect + noise,
  so the optimal warmdown of every cell is `optimum` (when it is one of the warmdowns run);
- the penalty  P_b(N) = a_b + b_b ln N  (the log-linear law), exactly, before noise (plus any
  planted offset: a size off the law);
- effects of extra config keys swept beside the axes (a scale rule, a matrix LR, a second corpus
  with the same folder name), an optimum that moves with bits, sizes without a warmdown preference;
- the grid-distance ratio d(QAT)/d(FP16) = `grid_ratio` at the probe bits;
- train-loss curves generated from the annealing law L0 + A S1^-alpha - C S2 with the run's own
  LR trace (so a fit on them must give back `anneal`).
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qat_lab import records as runs
from qat_lab.analysis import annealing_law
from qat_lab.schedules import ScheduleConfig

FP_BITS = 16
PROBE_BITS = 6


@dataclass
class Planted:
    sizes: dict[str, int] = field(default_factory=lambda: {"m5": 5_000_000, "m15": 15_000_000, "m50": 50_000_000,
                                                            "m100": 100_000_000})
    bits: tuple[int, ...] = (16, 6, 4)
    warmdowns: tuple[float, ...] = (0.1, 0.2, 0.33, 0.5)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    lr_mults: tuple[float, ...] = (1.0,)
    steps: int = 150
    optimum: float = 0.33
    curvature: float = 0.02
    """Loss added at a warmdown e-fold away from the optimum."""
    penalty: dict[int, tuple[float, float]] = field(default_factory=lambda: {8: (0.02, -0.001), 6: (0.30, -0.015),
                                                                              4: (1.20, -0.060)})
    """bits -> (a, b) of P_b(N) = a + b ln N."""
    seed_sd: float = 0.004
    """Per-seed shift shared by every warmdown and bit-width of that seed (what pairing removes)."""
    noise_sd: float = 0.0005
    grid_ratio: float = 1.04
    anneal: dict[str, float] = field(default_factory=lambda: {"L0": 1.6, "A": 2.5, "alpha": 0.5, "C": 0.002})
    anneal_lambda: float = 0.99
    curve_noise: float = 0.0
    """Relative noise on each train-loss point (0: curves exactly on the law)."""
    curve_every: int = 0
    """> 0: also log curve_loss (the law at that row, with curve_noise / 10: one fixed batch has no
    batch-to-batch noise) every curve_every steps, at warmdown start and after the last step, as
    runs do; 0: no curve_loss column (an older record)."""
    status: dict[tuple, str] = field(default_factory=dict)
    """(bits, model, warmdown, seed) -> a status other than completed, to plant failures."""
    extra: dict[str, tuple] = field(default_factory=dict)
    """Config keys swept beside the axes, as Hydra would (every combination, FP16 runs included):
    e.g. {'quant.scale_rule': ('absmax', 'percentile')}, {'optim.matrix_lr': (0.02, 0.04)}, or
    {'data.fingerprint': (fp_a, fp_b)} for two corpora in folders of the same name."""
    extra_effect: dict[str, dict] = field(default_factory=dict)
    """key -> value (or (value, bits): at that bit-width only) -> loss added; a quant.* key changes
    quantised runs only (FP16 has no quantiser)."""
    optimum_by_bits: dict[int, float] = field(default_factory=dict)
    """bits -> an optimal warmdown other than `optimum` (to plant an optimum that moves with bits)."""
    curvature_at: dict[tuple[int, str], float] = field(default_factory=dict)
    """(bits, model) -> a curvature other than `curvature` (0: no warmdown preference there)."""
    penalty_offset: dict[tuple[int, str], float] = field(default_factory=dict)
    """(bits, model) -> added to the penalty law there (a size off the law)."""

    def penalty_of(self, bits: int, size: float, model: str = "") -> float:
        if bits == FP_BITS:
            return 0.0
        a, b = self.penalty[bits]
        return a + b * math.log(size) + self.penalty_offset.get((bits, model), 0.0)

    def effect_of(self, bits: int, extras: dict) -> float:
        effects = [(self.extra_effect.get(k, {}), v) for k, v in extras.items()
                   if bits != FP_BITS or not k.startswith("quant.")]
        return sum(e.get(v, 0.0) + e.get((v, bits), 0.0) for e, v in effects)


def _base_loss(size: float) -> float:
    return 1.5 + 40.0 * size ** -0.2


def _job_name(bits: int, model: str, wd: float, lr: float, seed: int, extras: dict) -> str:
    name = f"bits={bits},lr_mult={lr},model={model},seed={seed},warmdown={wd}"
    # A fingerprint is no override: a corpus is chosen by its path, which is what Hydra names.
    return name + "".join(f",{k}={str(v)[:8] if k == 'data.fingerprint' else v}" for k, v in extras.items())


def _config(p: Planted, bits: int, wd: float, extras: dict) -> dict:
    """The part of a resolved config the analysis reads, with the extra keys set."""
    config = {"schedule": {"_target_": "qat_lab.schedules.ScheduleConfig", "kind": "wsd", "warmdown": wd,
                           "decay_shape": "linear", "warmup_steps": 0, "final_lr_frac": 0.0},
              "trainer": {"steps": p.steps}, "quant": {"bits": bits, "scale_rule": "absmax", "probe_bits": PROBE_BITS},
              "optim": {"name": "muon", "matrix_lr": 0.02}, "data": {"path": "/data/corp"}}
    for key, value in extras.items():
        if key == "data.fingerprint":
            continue
        node = config
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return config


def _record(p: Planted, sweep: str, job_dir: Path, bits: int, model: str, wd: float, lr: float, seed: int,
            val_loss: float, status: str, extras: dict | None = None) -> dict:
    extras = extras or {}
    size = p.sizes[model]
    grid_fp = (0.2450, 0.2470)
    ratio = p.grid_ratio if bits == PROBE_BITS else 1.0
    grid_bits = PROBE_BITS if bits == FP_BITS else bits
    pre, final = (grid_fp[0] * ratio, grid_fp[1] * ratio) if bits in (FP_BITS, PROBE_BITS) else (0.25, 0.251)
    results = {"steps_done": p.steps, "train_loss_final": val_loss, "unigram_val_bpb": 4.7, "grid_bits": grid_bits,
               "grid_distance_pre_warmdown": pre, "grid_distance_final": final}
    if status == "completed":
        results.update(val_loss=val_loss, val_bpb=val_loss / math.log(2) * 0.7, latent_val_loss=val_loss - 0.001,
                       quant_gap=0.001 if bits != FP_BITS else 0.0, finite=True)
    name = _job_name(bits, model, wd, lr, seed, extras)
    fingerprint = extras.get("data.fingerprint", "5" * 64)
    return {
        "schema_version": runs.SCHEMA_VERSION, "status": status, "sweep_id": sweep, "job_name": name, "job_num": 0,
        "job_dir": str(job_dir),
        "axes": {"bits": bits, "warmdown": wd, "lr_mult": lr, "model": model, "optim": "muon", "schedule": "wsd-linear",
                 "seed": seed, "steps": p.steps, "data": "synthetic", "seq_len": 128, "batch_size": 32},
        "results": results if status != "running" else {},
        "params": {"non_embedding": size, "embedding": 16384, "total": size + 16384},
        "timing": {"wall_s": 1.0}, "history_file": runs.HISTORY_NAME,
        "config": _config(p, bits, wd, extras),
        "data": {"corpus": "text", "fingerprint": fingerprint, "tokenizer_sha256": None},
        "error": "RuntimeError: planted failure" if status == "failed" else None,
        "diverged_at_step": 40 if status == "diverged" else None,
    }


def _metrics_csv(p: Planted, wd: float, lr: float, bits: int, size: float, val_loss: float, rng) -> str:
    sched = ScheduleConfig(warmdown=wd)
    eta = np.asarray(sched.trace(p.steps)) * lr
    s1, s2 = annealing_law.areas(eta, p.anneal_lambda)
    # The planted law, shifted by the penalty so bit-widths differ in level (the shape is the law's).
    exact = annealing_law.law(p.anneal, s1[1:], s2[1:]) + p.penalty_of(bits, size)  # rows 1..T
    loss = exact[:-1] * np.exp(rng.normal(0.0, p.curve_noise, p.steps - 1)) if p.curve_noise else exact[:-1]
    loss = np.concatenate([[loss[0] + 1.0], loss])  # step 0 (no update yet) is never fitted
    t0 = sched.warmdown_start(p.steps)
    curve = {}
    if p.curve_every:
        rows = sorted({*range(p.curve_every, p.steps + 1, p.curve_every), t0, p.steps} - {0})
        noisy = exact[np.array(rows) - 1] * np.exp(rng.normal(0.0, p.curve_noise / 10, len(rows)))
        curve = dict(zip(rows, noisy.tolist()))
    loss, eta = loss.tolist(), eta.tolist()  # Python floats: repr() is then the shortest exact decimal
    head = "step,train_loss,lr/muon/matrices,lr/adamw/embed,val_loss,val_bpb,grid_distance"
    lines = [head + (",curve_loss" if p.curve_every else "")]
    tail = (lambda k: f",{curve[k]!r}" if k in curve else ",") if p.curve_every else (lambda k: "")
    for k in range(p.steps):
        grid = "0.2" if k % 25 == 0 or k == t0 else ""
        lines.append(f"{k},{loss[k]!r},{0.02 * eta[k]!r},{0.05 * eta[k]!r},,,{grid}{tail(k)}")
    lines.append(f"{p.steps},,,,{float(val_loss)!r},{float(val_loss) / math.log(2) * 0.7!r},0.25{tail(p.steps)}")
    return "\n".join(lines) + "\n"


def write_sweep(root: str | Path, p: Planted | None = None, sweep: str = "synthetic", seed: int = 0,
                histories: bool = True) -> Path:
    """Write one job dir per grid point under root/sweep; returns the sweep dir."""
    p = p or Planted()
    rng = np.random.default_rng(seed)
    sweep_dir = Path(root) / sweep
    seed_shift = {s: rng.normal(0.0, p.seed_sd) for s in p.seeds}
    combos = [dict(zip(p.extra, values)) for values in itertools.product(*p.extra.values())]
    for model, size in p.sizes.items():
        for lr in p.lr_mults:
            for wd in p.warmdowns:
                for seed_ in p.seeds:
                    shared: dict[tuple, float] = {}
                    for extras in combos:
                        # One noise draw per (size, lr, wd, seed) and non-quantiser extras, shared by the
                        # bit-widths: the penalty of a pair is then exactly P_b(N) plus the quantised run's
                        # own small noise, and FP16 runs that differ only in quantiser settings (which
                        # cannot change them) are identical, as real ones are.
                        trained = tuple((k, v) for k, v in extras.items() if not k.startswith("quant."))
                        if trained not in shared:
                            shared[trained] = seed_shift[seed_] + rng.normal(0.0, p.noise_sd)
                        for bits in p.bits:
                            own = rng.normal(0.0, p.noise_sd) if bits != FP_BITS else 0.0
                            optimum = p.optimum_by_bits.get(bits, p.optimum)
                            curvature = p.curvature_at.get((bits, model), p.curvature)
                            # Warmdown 0 (constant LR) sits one e-fold below the smallest grid value.
                            val = (_base_loss(size) + curvature * math.log(max(wd, 0.05) / optimum) ** 2
                                   + p.penalty_of(bits, size, model) + p.effect_of(bits, extras) + shared[trained] + own)
                            status = p.status.get((bits, model, wd, seed_), "completed")
                            job = sweep_dir / _job_name(bits, model, wd, lr, seed_, extras)
                            job.mkdir(parents=True, exist_ok=True)
                            (job / runs.RECORD_NAME).write_text(json.dumps(
                                _record(p, sweep, job, bits, model, wd, lr, seed_, val, status, extras), allow_nan=True))
                            if histories and status != "running":
                                (job / runs.HISTORY_NAME).write_text(_metrics_csv(p, wd, lr, bits, size, val, rng))
    return sweep_dir
