"""`make gpu-check`: the GPU path, measured and checked in one command (docs/benchmarks_gpu.md).

    python -m bench.gpu_check --out docs/benchmarks_gpu.md     # what `make gpu-check` runs

On a machine with a CUDA GPU (within about 8 minutes):
1. throughput: tokens/s and bf16 MFU of the 15m, 50m and 100m presets, eager and torch.compile'd,
   Muon, bits=16 and bits=6 (MFU against the GPU's dense bf16 peak, from GPU_PEAKS by its name);
2. parity: bf16-mixed vs fp32, the same 50 steps of 15m from the same weights and batches;
3. Muon's Newton-Schulz in bfloat16 (torch's choice on GPU) against float32: agreement and time;
4. a 4-job sweep through the real CLI (`qatlab -m bits=4,16 warmdown=0.1,0.33 model=15m
   trainer=gpu ...`) with its records checked;
5. warnings: none of "Mismatch dtype", "fallback", "Cannot dispatch" anywhere above.
Without a GPU the same code runs on the CPU with cpu-xs, fp32 and no compile for (1), bf16 autocast
on the CPU for (2), a small matrix for (3) and the smoke preset for (4); the report says what was
skipped, and the command exits 0 (CI runs it this way). It exits 1 if a check fails.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

GPU_PEAKS = {
    # name fragment (as torch.cuda.get_device_name reports it) -> (dense bf16 FLOP/s, source)
    "H200": (989e12, "NVIDIA H200 datasheet: 989 TFLOPS bf16 dense (1,979 with sparsity), SXM"),
    "H100 PCIe": (756e12, "NVIDIA H100 datasheet: 756 TFLOPS bf16 dense, PCIe"),
    "H100": (989e12, "NVIDIA H100 datasheet: 989 TFLOPS bf16 dense, SXM"),
    "A100": (312e12, "NVIDIA A100 datasheet: 312 TFLOPS bf16 dense"),
    "L40S": (362e12, "NVIDIA L40S datasheet: 362 TFLOPS bf16 dense"),
    "L4": (121e12, "NVIDIA L4 datasheet: 121 TFLOPS bf16 dense"),
    "A10": (125e12, "NVIDIA A10 datasheet: 125 TFLOPS bf16 dense"),
    "RTX 4090": (165e12, "NVIDIA Ada whitepaper: 165 TFLOPS bf16 dense (fp32 accumulate)"),
}
NOISE = ("Mismatch dtype", "fallback", "Cannot dispatch")
BUDGET_S = 8 * 60


def peak_for(name: str) -> tuple[float | None, str]:
    for fragment, (flops, source) in GPU_PEAKS.items():  # most specific first (H100 PCIe before H100)
        if fragment in name:
            return flops, source
    return None, f"unknown GPU {name!r}: add its dense bf16 peak to bench/gpu_check.GPU_PEAKS"


def _spec(model: str, bits: int, steps: int, device: str):
    import hydra

    from qat_lab.config import build_spec

    overrides = [f"model={model}", f"bits={bits}", "logger=none", f"trainer.steps={steps}",
                 f"trainer.accelerator={'gpu' if device == 'cuda' else 'cpu'}"]
    if device == "cuda":
        overrides += ["trainer=gpu", "data.seq_len=1024", "data.batch_size=16"]
    hydra.core.global_hydra.GlobalHydra.instance().clear()
    with hydra.initialize_config_module(config_module="qat_lab.conf", version_base="1.3"):
        return build_spec(hydra.compose("config", overrides=overrides))


def _batches(spec, n: int, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        t = torch.randint(0, 256, (spec.data.batch_size, spec.data.seq_len + 1), generator=g)
        out.append((t[:, :-1].to(device), t[:, 1:].to(device)))
    return out


def _train(spec, batches, device: str, autocast: bool, compiled: bool, seed: int = 0):
    """(losses, seconds per step after the first `len(batches) // 5` steps) of a bare Muon loop."""
    from qat_lab.models.gpt import GPT, lm_loss
    from qat_lab.optim import apply_step_hparams, build_optimisers
    from qat_lab.quant import apply_qat

    torch.manual_seed(seed)
    model = GPT(spec.model, 256).to(device)
    apply_qat(model, spec.quant)
    opts = build_optimisers(model, spec.optim, spec.lr_mult)
    if compiled:
        model.compile()
    warm = max(1, len(batches) // 5)
    losses, start = [], None
    for step, (x, y) in enumerate(batches):
        if step == warm:
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        apply_step_hparams(opts, step, spec.schedule.multiplier(step, spec.trainer.steps))
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            loss = lm_loss(model(x), y)
        loss.backward()
        for opt in opts:
            opt.step()
            opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    if device == "cuda":
        torch.cuda.synchronize()
    return losses, (time.perf_counter() - start) / (len(batches) - warm)


def throughput(device: str, presets: list[str], steps: int, compile_too: bool, peak: float | None, deadline: float):
    rows, skipped = [], []
    for preset in presets:
        for bits in (16, 6):
            for compiled in ((False, True) if compile_too else (False,)):
                if time.perf_counter() > deadline:
                    skipped.append(f"{preset} bits={bits}{' compiled' if compiled else ''}: over the time budget")
                    continue
                spec = _spec(preset, bits, steps, device)
                losses, step_s = _train(spec, _batches(spec, steps, device), device, device == "cuda", compiled)
                tokens = spec.data.batch_size * spec.data.seq_len
                fpt = spec.model.flops_per_token(256, spec.data.seq_len)
                rows.append({"model": preset, "bits": bits, "compiled": compiled, "tok_s": tokens / step_s,
                             "mfu": fpt * tokens / step_s / peak if peak else None, "loss": losses[-1]})
    return rows, skipped


def parity(device: str, preset: str, steps: int, rtol: float):
    spec = _spec(preset, 16, steps, device)
    batches = _batches(spec, steps, device, seed=1)
    fp32, _ = _train(spec, batches, device, autocast=False, compiled=False)
    bf16, _ = _train(spec, batches, device, autocast=True, compiled=False)
    worst = max(abs(a - b) / abs(a) for a, b in zip(fp32, bf16))
    return {"steps": steps, "fp32_final": fp32[-1], "bf16_final": bf16[-1], "max_rel_diff": worst, "ok": worst <= rtol,
            "learned": fp32[-1] < fp32[0]}


def newton_schulz(device: str, shape: tuple[int, int]):
    from qat_lab.optim.muon import orthogonalise

    g = torch.randn(*shape, generator=torch.Generator().manual_seed(2)).to(device)
    coeffs = (3.4445, -4.7750, 2.0315)
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        orthogonalise(g, coeffs, 5, 1e-7, dtype)
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(10):
            x = orthogonalise(g, coeffs, 5, 1e-7, dtype)
        if device == "cuda":
            torch.cuda.synchronize()
        out[str(dtype).split(".")[-1]] = {"ms": (time.perf_counter() - t) / 10 * 1e3, "x": x.float()}
    a, b = out["float32"]["x"], out["bfloat16"]["x"]
    rel = float((a - b).norm() / a.norm())
    sv = torch.linalg.svdvals(b)
    return {"shape": shape, "fp32_ms": out["float32"]["ms"], "bf16_ms": out["bfloat16"]["ms"], "rel_diff": rel,
            "bf16_singular_values": (float(sv.min()), float(sv.max())), "ok": rel < 0.1}


def cli_sweep(device: str, tmp: Path):
    bin_dir = Path(sys.executable).parent
    args = ["-m", "bits=4,16", "warmdown=0.1,0.33", "logger=none", f"hydra.sweep.dir={tmp / 'sweep'}"]
    args += (["model=15m", "trainer=gpu", "trainer.steps=50", "trainer.compile=false", "data.seq_len=512",
              "data.batch_size=16", "trainer.val_every=25", "trainer.grid_every=25", "data.val_tokens=16384"]
             if device == "cuda" else ["experiment=smoke", "trainer.steps=8", "data.val_tokens=2048"])
    start = time.perf_counter()
    result = subprocess.run([str(bin_dir / "qatlab"), *args], capture_output=True, text=True, timeout=900,
                            cwd=tmp, env={**os.environ, "WANDB_SILENT": "true"})
    from qat_lab.records import find_records, read_record

    recs = [read_record(p) for p in find_records(tmp / "sweep")]
    ok = (result.returncode == 0 and len(recs) == 4 and all(r["status"] == "completed" for r in recs)
          and all(r["timing"]["device"].startswith(device) for r in recs))
    return {"args": args, "returncode": result.returncode, "records": len(recs), "wall_s": time.perf_counter() - start,
            "statuses": sorted(r["status"] for r in recs), "ok": ok, "output": result.stdout + result.stderr,
            "devices": sorted({r["timing"]["device"] for r in recs})}


def report(res: dict, args) -> str:
    lines = ["# GPU check", "", "Generated by `make gpu-check` (bench/gpu_check.py); do not edit by hand.", "",
             f"- Machine: {res['device_name']}, torch {torch.__version__}, Python {platform.python_version()}",
             f"- Peak used for MFU: {res['peak_source']}", f"- Wall time: {res['wall_s']:.0f} s", ""]
    if res["device"] == "cpu":
        lines += ["> **No CUDA GPU here**: the same code ran on the CPU with small models, fp32 and no torch.compile;",
                  "> the numbers below check the pipeline, not GPU speed.", ""]
    lines += ["## 1. Throughput (bare Muon loop, random tokens)", "",
              "| model | bits | compiled | tokens/s | MFU |", "|---|---|---|---|---|"]
    for r in res["throughput"]:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
        lines.append(f"| {r['model']} | {r['bits']} | {'yes' if r['compiled'] else 'no'} | {r['tok_s']:,.0f} | {mfu} |")
    lines += [""] + [f"- skipped: {s}" for s in res["skipped"]] + [""]
    p = res["parity"]
    lines += ["## 2. bf16-mixed vs fp32", "",
              f"{p['steps']} steps from the same weights and batches: final loss fp32 {p['fp32_final']:.4f}, bf16 "
              f"{p['bf16_final']:.4f}; largest per-step relative difference {p['max_rel_diff']:.2e} "
              f"(tolerance {args.parity_rtol:g}): **{'ok' if p['ok'] else 'FAILED'}**.", ""]
    n = res["ns"]
    lines += ["## 3. Muon's Newton-Schulz: bfloat16 vs float32", "",
              f"A {n['shape'][0]} x {n['shape'][1]} update, 5 iterations: float32 {n['fp32_ms']:.2f} ms, bfloat16 "
              f"{n['bf16_ms']:.2f} ms; relative difference {n['rel_diff']:.3f}; bfloat16 result's singular values "
              f"{n['bf16_singular_values'][0]:.2f}-{n['bf16_singular_values'][1]:.2f}: **{'ok' if n['ok'] else 'FAILED'}**.",
              ""]
    c = res["cli"]
    lines += ["## 4. A 4-job sweep through the real CLI", "", f"`qatlab {' '.join(c['args'])}`", "",
              f"exit {c['returncode']}, {c['records']} records ({', '.join(c['statuses'])}), device "
              f"{', '.join(c['devices'])}, {c['wall_s']:.0f} s: **{'ok' if c['ok'] else 'FAILED'}**.", ""]
    lines += ["## 5. Warnings", "", (f"None of {', '.join(NOISE)}: **ok**." if not res["noise"] else
                                     "**FAILED**: " + "; ".join(res["noise"])), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="docs/benchmarks_gpu.md")
    p.add_argument("--steps", type=int, default=30, help="steps per throughput run (a fifth are warmup)")
    p.add_argument("--parity-steps", type=int, default=50)
    p.add_argument("--parity-rtol", type=float, default=0.02)
    args = p.parse_args(argv)
    start = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or "CPU"
    peak, source = peak_for(name) if device == "cuda" else (None, "no GPU: MFU not computed")
    from qat_lab.train import quiet_lightning

    quiet_lightning()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if device == "cuda":
            rows, skipped = throughput(device, ["15m", "50m", "100m"], args.steps, True, peak, start + BUDGET_S * 0.6)
            par = parity(device, "15m", args.parity_steps, args.parity_rtol)
            ns = newton_schulz(device, (768, 3072))
        else:
            rows, skipped = throughput(device, ["cpu-xs"], 10, False, None, math.inf)
            skipped += ["15m, 50m, 100m and torch.compile: no GPU (cpu-xs, eager, fp32 instead)"]
            par = parity(device, "cpu-xs", 10, args.parity_rtol)
            ns = newton_schulz(device, (128, 512))
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        cli = cli_sweep(device, Path(tmp))
    noise = [f"{w.category.__name__}: {str(w.message)[:120]}" for w in caught if any(n in str(w.message) for n in NOISE)]
    noise += [line[:160] for line in cli["output"].splitlines() if any(n in line for n in NOISE)]
    res = {"device": device, "device_name": name, "peak_source": source, "throughput": rows, "skipped": skipped,
           "parity": par, "ns": ns, "cli": cli, "noise": noise, "wall_s": time.perf_counter() - start}
    text = report(res, args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    ok = par["ok"] and ns["ok"] and cli["ok"] and not noise and (par["learned"] or device == "cpu")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
