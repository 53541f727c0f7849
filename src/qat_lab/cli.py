"""Console entry point `qatlab`: check every job of the sweep, then hand over to Hydra.

Before Hydra launches anything, `preflight` composes the config of every job the command line
describes (the cartesian product of its sweep values) and validates it, so `bits=3.5`, an unknown
model or a missing data file is one clear line and a non-zero exit before any job starts: a typo
in the last value of a sweep never costs the runs before it.
"""

from __future__ import annotations

import itertools
import math
import sys
from contextlib import contextmanager

import hydra
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException
import torch
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from qat_lab.errors import ConfigError, DataError

CONFIG_MODULE = "qat_lab.conf"
MAX_PREFLIGHT_JOBS = 256
"""Compose at most this many jobs up front; bigger grids are checked on a covering subset."""


def _parse(overrides: list[str]):
    return OverridesParser.create().parse_overrides(overrides)


def _expand(overrides: list[str]) -> list[list[str]]:
    """Every job's override list (Hydra's basic-sweeper semantics: a later value of a key wins)."""
    axes: dict[str, list[str]] = {}
    for o in _parse(overrides):
        key = o.get_key_element()
        axes.pop(key, None)  # keep the order of the last occurrence, like the sweeper
        axes[key] = [f"{key}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override() else [o.input_line]
    values = list(axes.values())
    jobs = [list(c) for c in itertools.product(*values)]
    if len(jobs) <= MAX_PREFLIGHT_JOBS:
        return jobs
    # Covering subset: every value of every axis appears in at least one composed job.
    width = max(len(a) for a in values)
    return [[a[i % len(a)] for a in values] for i in range(width)]


def _compose(job: list[str], with_hydra: bool = False) -> DictConfig:
    try:
        return compose(config_name="config", overrides=job, return_hydra_config=with_hydra)
    except MissingConfigException as e:
        raise ConfigError(_missing_config_line(e, job)) from None
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(str(e).strip().splitlines()[0]) from None


def sweep_overrides(overrides: list[str], multirun: bool) -> list[str]:
    """The command line's overrides, preceded by the grid an experiment preset declares in
    hydra.sweeper.params (multirun only; the command line wins for a key given twice)."""
    if not multirun:
        return overrides
    fixed = [o.input_line for o in _parse(overrides) if not o.is_sweep_override()]
    params = _compose(fixed, with_hydra=True).hydra.sweeper.params or {}
    return [f"{k}={v}" for k, v in params.items()] + overrides


def _missing_config_line(e: MissingConfigException, overrides: list[str]) -> str:
    group = (e.missing_cfg_file or "").split("/")[0]
    given = next((o for o in overrides if o.split("=")[0].lstrip("+~") == group), e.missing_cfg_file)
    options = ", ".join(e.options or [])
    return f"{given} is not a known {group} config (available: {options})" if group and options else str(e).splitlines()[0]


def validate_job(cfg: DictConfig):
    from qat_lab.config import build_spec

    spec = build_spec(cfg)
    _check_step_memory(spec)
    return spec


def _check_step_memory(spec) -> None:
    """Natural-gradient optimisers: a batch whose per-sample Jacobian would not fit
    optim.memory_budget_mb is a ConfigError now, not an out-of-memory kill mid-sweep. The model
    is built on the meta device (no memory, no time); the estimate is docs/ief.md's."""
    from qat_lab.optim.config import IEFConfig

    if not isinstance(spec.optim, IEFConfig):
        return
    from qat_lab.models.gpt import GPT
    from qat_lab.optim import build_optimizers

    with torch.device("meta"):
        model = GPT(spec.model, spec.data.vocab_size or 256)
    build_optimizers(model, spec.optim, spec.lr_mult)[0].plan_chunk(spec.data.batch_size, spec.data.seq_len)


@contextmanager
def _config_module():
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


def preflight(overrides: list[str], multirun: bool = True) -> int:
    """Compose and validate every job; raise ConfigError/DataError with one line. Returns job count."""
    with _config_module():
        jobs = _expand(sweep_overrides(overrides, multirun))
        for job in jobs:
            spec = validate_job(_compose(job))
            if multirun and spec.trainer.devices not in (1, "1") and _launcher(job) == "basic":
                # Lightning starts extra DDP processes by re-running this command line, which in a
                # local multirun would start the whole sweep again in every process.
                raise ConfigError(f"trainer.devices={spec.trainer.devices} needs one process per device: in a sweep use "
                                  "launcher=slurm with hydra.launcher.tasks_per_node=<devices>, or run single jobs")
    return len(jobs)


def _launcher(job: list[str]) -> str:
    target = str(_compose(job, with_hydra=True).hydra.launcher._target_)
    return "basic" if target.endswith("BasicLauncher") else target


CHEAP_AXES = ("bits", "warmdown", "lr_mult", "seed")
"""Axes that change neither a job's length nor its cost: composed once per remaining combination."""


def dry_run(overrides: list[str], multirun: bool) -> str:
    """What a command would launch: job count, tokens and training compute, per model."""
    from qat_lab.models.gpt import GPT, flops_per_token, matmul_params

    with _config_module():
        parsed = _parse(sweep_overrides(overrides, multirun))
        axes: dict[str, list[str]] = {}
        for o in parsed:
            key = o.get_key_element()
            axes.pop(key, None)
            axes[key] = [f"{key}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override() else [o.input_line]
        cheap = [v for k, v in axes.items() if k in CHEAP_AXES]
        per_combo = math.prod(len(v) for v in cheap)
        rows: dict[str, dict] = {}
        for combo in itertools.product(*[v for k, v in axes.items() if k not in CHEAP_AXES]):
            job = list(combo) + [v[0] for v in cheap]
            spec = validate_job(_compose(job))
            with torch.device("meta"):
                n_matmul = matmul_params(GPT(spec.model, 256))
            tokens = spec.trainer.steps * spec.data.batch_size * spec.data.seq_len
            flops = tokens * flops_per_token(spec.model, n_matmul, spec.data.seq_len)
            row = rows.setdefault(spec.model.name, {"jobs": 0, "steps": set(), "tokens": 0, "flops": 0.0})
            row["jobs"] += per_combo
            row["steps"].add(spec.trainer.steps)
            row["tokens"] += tokens * per_combo
            row["flops"] += flops * per_combo
    total_jobs = sum(r["jobs"] for r in rows.values())
    lines = [f"{total_jobs} jobs", "", "| model | jobs | steps/job | tokens (all jobs) | training PFLOP (all jobs) |",
             "|---|---|---|---|---|"]
    for name, r in rows.items():
        steps = "/".join(str(s) for s in sorted(r["steps"]))
        lines.append(f"| {name} | {r['jobs']} | {steps} | {r['tokens']:.3g} | {r['flops'] / 1e15:.3g} |")
    tokens = sum(r["tokens"] for r in rows.values())
    flops = sum(r["flops"] for r in rows.values())
    lines += ["", f"total: {total_jobs} jobs, {tokens:.3g} tokens, {flops / 1e15:.3g} PFLOP "
              f"(= {flops / 1e15 / (0.4 * 989e12 * 3600 / 1e15):.3g} H100-hours at 40% of 989 TFLOP/s bf16)"]
    return "\n".join(lines)


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    from qat_lab.train import run_job

    LAST_RUN["status"] = run_job(cfg).get("status")


LAST_RUN: dict[str, str | None] = {}
"""Status of the job a single (non-multirun) invocation ran; a failed job makes the exit non-zero."""


def _user_overrides(argv: list[str]) -> list[str] | None:
    """The override arguments, or None when Hydra is asked for help/info/config (no preflight)."""
    out = []
    for a in argv:
        if a in ("-m", "--multirun", "--dry-run"):
            continue
        if a.startswith("-"):
            return None
        out.append(a)
    return out


def main() -> None:
    argv = sys.argv[1:]
    overrides = _user_overrides(argv)
    multirun = "-m" in argv or "--multirun" in argv
    if overrides is not None:
        try:
            if "--dry-run" in argv:
                print(dry_run(overrides, multirun))
                return
            preflight(overrides, multirun)
        except (ConfigError, DataError) as e:
            print(f"qatlab: error: {e}", file=sys.stderr)
            sys.exit(2)
    _hydra_main()
    from qat_lab.summary import LAST_SWEEP

    counts = LAST_SWEEP.get("counts", {})
    if counts.get("failed") or counts.get("interrupted") or LAST_RUN.get("status") in ("failed", "interrupted"):
        sys.exit(1)


if __name__ == "__main__":
    main()
