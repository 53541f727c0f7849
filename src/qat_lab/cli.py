"""Console entry point `qatlab`: check every job of the sweep, then hand over to Hydra.

Before Hydra launches anything, `preflight` expands the command line into its jobs with Hydra's
own override parser and basic-sweeper semantics (so `glob()`, `range()` and presets' grids work as
they will at launch), composes every job's config and validates it, checks each distinct data
config once (the corpus exists, is not empty, holds a train and a val sequence) and checks that
the output dir can be written. Any problem is one line and exit status 2 before any job starts,
and nothing is created: a typo in the last value of a sweep never costs the runs before it.
Nothing heavy (torch, Lightning) is imported until a job runs or a model must be built.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import math
import os
import sys
from contextlib import contextmanager
from pathlib import Path

from qat_lab.errors import ConfigError, DataError

CONFIG_MODULE = "qat_lab.conf"
MAX_PREFLIGHT_JOBS = 256
"""Compose at most this many jobs up front; bigger grids are checked on a covering subset."""
NUMERIC_AXES = {"bits": "int", "seed": "int", "warmdown": "float", "lr_mult": "float"}
"""Top-level axes whose values are normalised (bits=16.0 is bits=16: one job dir, one identity)."""
MIN_FREE_BYTES = 1 << 20
"""An output filesystem with less free space than this stops the command before the first job."""

USAGE = """\
usage: qatlab [-m] [--dry-run] [KEY=VALUE ...]        (Hydra overrides; -m sweeps comma-separated values)

Train quantisation-aware decoder LMs and sweep the study's axes (docs in the README).

  qatlab                                      one run with the defaults (bits=16, warmdown=0.33)
  qatlab bits=6 warmdown=0.1 optim=adamw      one run, overridden
  qatlab -m bits=4,6,8,16 warmdown=0.1,0.33   a sweep (Hydra multirun)
  qatlab --dry-run -m experiment=phase2       list a sweep: jobs, tokens, compute, estimated hours
  qatlab --cfg job bits=6                     print the composed config (Hydra)

sweep axes:    bits (2..8, or 16 = no quantisation), warmdown (fraction in [0, 1]), lr_mult, seed
config groups: {groups}
presets:       experiment={presets}
any field:     model.d_model=96, optim.matrix_lr=0.03, quant.scale_rule=percentile, trainer.steps=300 ...
options:       -m/--multirun   --dry-run   -q/--quiet (no per-step progress lines)   --help   --hydra-help
"""


def _parser():
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    loader = GlobalHydra.instance().config_loader() if GlobalHydra.instance().is_initialized() else None
    return OverridesParser.create(config_loader=loader)


def _parse(overrides: list[str]):
    from hydra.errors import HydraException

    try:
        return _parser().parse_overrides(overrides)
    except HydraException as e:
        raise ConfigError(_one_line(str(e))) from None


def _one_line(message: str) -> str:
    """Hydra's message as one line: its first line, then its hints (joined with '; ')."""
    lines = [ln.strip() for ln in message.strip().splitlines() if ln.strip()]
    if not lines:
        return "invalid override"
    head, hints = lines[0], [ln for ln in lines[1:] if not ln.startswith(("full_key", "object_type", "Config search"))]
    return "; ".join([head, *hints[:2]])


def _canonical_number(text: str, kind: str) -> str:
    """'16.0' -> '16', '1.0' -> '1', '.33' -> '0.33'; text that is not a number is left alone
    (the validators reject it with the key's own message)."""
    try:
        value = float(text)
    except ValueError:
        return text
    if not math.isfinite(value):
        return text
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return text if kind == "int" else repr(value)


def normalise(overrides: list[str]) -> list[str]:
    """Numeric sweep axes written one way (bits=16.0 -> bits=16, lr_mult=1.0 -> lr_mult=1), so the
    same run always gets the same job dir and identity. Function sweeps (range, glob) are left.

    Each literal axis value is checked on the way (config.AXIS_CHECKS, the validators build_spec
    uses): a bad value is the same one line as from the preflight, without composing any config."""
    from hydra.core.override_parser.types import ValueType

    from qat_lab.config import AXIS_CHECKS

    out = []
    for text, o in zip(overrides, _parse(overrides)):
        key = o.get_key_element()
        kind = NUMERIC_AXES.get(key)
        if kind is None or o.is_delete():
            out.append(text)
            continue
        if o.value_type in (ValueType.ELEMENT, ValueType.SIMPLE_CHOICE_SWEEP):
            values = [o.value()] if o.value_type == ValueType.ELEMENT else list(o.value().list)
            for value in values:
                if not (isinstance(value, str) and "${" in value):  # interpolations resolve at composition
                    AXIS_CHECKS[key](value)
        prefix = text.split("=", 1)[0]
        if o.value_type == ValueType.ELEMENT and isinstance(o.value(), (int, float)):
            out.append(f"{prefix}={_canonical_number(o.get_value_element_as_str(), kind)}")
        elif o.value_type == ValueType.SIMPLE_CHOICE_SWEEP and all(
                isinstance(x, (int, float)) for x in o.value().list):
            out.append(f"{prefix}={','.join(_canonical_number(s, kind) for s in o.sweep_string_iterator())}")
        else:
            out.append(text)
    return out


_COMPOSED: dict[tuple[str, ...], object] = {}
"""Compositions of this command (with the hydra node): each distinct override list is composed once."""


def _axis_split(job: list[str]) -> tuple[tuple[str, ...], dict[str, str]]:
    """(the job's other overrides, {axis: value text} of its plain top-level numeric axes)."""
    rest, axes = [], {}
    for text in job:
        key, eq, value = text.partition("=")
        if eq and key in NUMERIC_AXES and "${" not in value:
            axes[key] = value
        else:
            rest.append(text)
    return tuple(rest), axes


def _from_sibling(job: list[str]):
    """The job's config (without the hydra node) from an already composed job that differs only in
    top-level numeric axis values (bits, warmdown, lr_mult, seed), or None.

    Those axes are plain top-level values that the groups read by interpolation (quant.bits:
    ${bits}); no defaults list depends on them. So setting them in a copy of the sibling's config
    is what Hydra's composition of the override would give, without a second composition: a
    sweep of 8 bits x warmdown jobs composes once in the preflight and the dry run."""
    from omegaconf import OmegaConf

    rest, axes = _axis_split(job)
    for other in _COMPOSED:
        other_rest, other_axes = _axis_split(list(other))
        if other_rest == rest and other_axes.keys() == axes.keys():
            base = _COMPOSED[other]
            cfg = copy.deepcopy(OmegaConf.masked_copy(base, [k for k in base.keys() if k != "hydra"]))
            for k, value in axes.items():
                parsed = _parse([f"{k}={value}"])[0].value()
                OmegaConf.update(cfg, k, parsed, merge=False)
            return cfg
    return None


def _compose(job: list[str], with_hydra: bool = False):
    """The composed config of one job (the hydra node kept only if asked: build_spec ignores it)."""
    from hydra import compose
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    key = tuple(job)
    if not with_hydra and key not in _COMPOSED:
        derived = _from_sibling(job)
        if derived is not None:
            return derived
    if key not in _COMPOSED:
        try:
            _COMPOSED[key] = compose(config_name="config", overrides=job, return_hydra_config=True)
        except MissingConfigException as e:
            raise ConfigError(_missing_config_line(e, job)) from None
        except (HydraException, OmegaConfBaseException, ValueError) as e:  # Hydra raises ValueError for some overrides
            if "Config group override must be a string" in str(e):  # qat_start=0.5: a number where a name goes
                raise ConfigError(_numeric_group_value(job)) from None
            raise ConfigError(_override_error(str(e), job)) from None
    cfg = _COMPOSED[key]
    if with_hydra:
        return cfg
    return OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"])


def _numeric_group_value(job: list[str]) -> str:
    from importlib import resources

    conf = resources.files(CONFIG_MODULE)
    groups = {p.name for p in conf.iterdir() if p.is_dir()}
    for o in job:
        key, _, value = o.partition("=")
        if key.lstrip("+~") in groups:
            options = sorted(f.name[:-5] for f in conf.joinpath(key.lstrip("+~")).iterdir() if f.name.endswith(".yaml"))
            if value not in options:
                near = [o for o in options if value in o][:1] or difflib.get_close_matches(value, options, n=1)
                hint = f" (did you mean {key}={near[0]}?)" if near else ""
                return f"{o} is not a known {key} config{hint}; available: {', '.join(options)}"
    return "a config group override must name an option"


def _override_error(message: str, job: list[str]) -> str:
    """Hydra's "Could not override 'x'" with its hint, plus the nearest existing key."""
    import re

    m = re.search(r"Could not override '([^']+)'", message)
    if not m:
        return _one_line(message)
    key = m.group(1)
    given = next((o for o in job if o.split("=")[0].lstrip("+~") == key), key)
    known = _known_keys(key)
    near = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {near[0]}?)" if near else ""
    return f"{given}: {key} is not a setting{hint}"


_KNOWN_KEYS: list[str] = []


def _known_keys(key: str) -> list[str]:
    """Every dotted key of the default config (for did-you-mean hints)."""
    if not _KNOWN_KEYS:
        from hydra import compose
        from omegaconf import OmegaConf

        def walk(node, prefix=""):
            for k, v in node.items():
                name = f"{prefix}{k}"
                _KNOWN_KEYS.append(name)
                if isinstance(v, dict):
                    walk(v, name + ".")

        walk(OmegaConf.to_container(compose(config_name="config", overrides=[]), resolve=False))
    group = key.rsplit(".", 1)[0] + "." if "." in key else ""
    return [k for k in _KNOWN_KEYS if k.startswith(group) and k.count(".") == key.count(".")]


def _missing_config_line(e, overrides: list[str]) -> str:
    group = (e.missing_cfg_file or "").split("/")[0]
    given = next((o for o in overrides if o.split("=")[0].lstrip("+~") == group), e.missing_cfg_file)
    options = list(e.options or [])
    value = str(given).split("=", 1)[-1]
    near = difflib.get_close_matches(value, options, n=1)
    hint = f" (did you mean {group}={near[0]}?)" if near else ""
    return (f"{given} is not a known {group} config{hint}; available: {', '.join(options)}" if group and options
            else _one_line(str(e)))


def sweep_overrides(overrides: list[str], multirun: bool) -> list[str]:
    """The command line's overrides, preceded by the grid an experiment preset declares in
    hydra.sweeper.params (multirun only; the command line wins for a key given twice, as in
    Hydra's basic sweeper). Without -m a preset's grid is an error: it would run one default job."""
    fixed = [o.input_line for o in _parse(overrides) if not o.is_sweep_override()]
    params = dict(_compose(fixed, with_hydra=True).hydra.sweeper.params or {})
    if not multirun:
        sweeps = [o.input_line for o in _parse(overrides) if o.is_sweep_override()]
        if sweeps:
            raise ConfigError(f"{sweeps[0]} is a sweep: add -m (qatlab -m {' '.join(overrides)})")
        if params:
            preset = next((o for o in overrides if o.startswith("experiment=")), "this preset")
            raise ConfigError(f"{preset} is a sweep of {_count(params)} jobs: run it with -m (qatlab -m "
                              f"{' '.join(overrides)}) or list it with --dry-run -m")
        return overrides
    return [f"{k}={v}" for k, v in params.items()] + overrides


def _count(params: dict) -> int:
    return math.prod(len(list(o.sweep_string_iterator())) if o.is_sweep_override() else 1
                     for o in _parse([f"{k}={v}" for k, v in params.items()]))


def expand(overrides: list[str]) -> tuple[int, list[list[str]]]:
    """(number of jobs, the jobs to compose): every job when there are at most MAX_PREFLIGHT_JOBS,
    else a covering subset in which every value of every axis appears. Hydra's BasicSweeper
    semantics: discrete sweeps (a,b / range / glob / choice) only; a later value of a key wins."""
    from collections import OrderedDict

    axes: OrderedDict[str, list[str]] = OrderedDict()
    for o in _parse(overrides):
        key = o.get_key_element()
        if o.is_sweep_override():
            if not o.is_discrete_sweep():
                raise ConfigError(f"{o.input_line}: {o.value_type.name.lower().replace('_', ' ')} needs a sampling "
                                  "sweeper (e.g. Optuna); qatlab's sweeps take lists: a,b,c, range(...), glob(...)")
            values = [f"{key}={v}" for v in o.sweep_string_iterator()]
            if not values:
                raise ConfigError(f"{o.input_line} matches no value")
            axes[key] = values
        else:
            axes[key] = [o.input_line]
    lists = list(axes.values())
    count = math.prod(len(v) for v in lists)
    if count <= MAX_PREFLIGHT_JOBS:
        return count, [list(c) for c in itertools.product(*lists)]
    width = max(len(a) for a in lists)
    return count, [[a[i % len(a)] for a in lists] for i in range(width)]


@contextmanager
def _config_module():
    """Hydra initialised on qat_lab's config package for this block (re-entrant: an inner block
    reuses the outer one and its compositions)."""
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized() and _COMPOSED.get(("__qatlab__",)):
        yield
        return
    GlobalHydra.instance().clear()
    _COMPOSED.clear()
    _COMPOSED[("__qatlab__",)] = True
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            yield
    finally:
        GlobalHydra.instance().clear()
        _COMPOSED.clear()


def validate_job(cfg):
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
    import torch

    from qat_lab.models.gpt import GPT
    from qat_lab.optim.build import build_optimisers

    with torch.device("meta"):
        model = GPT(spec.model, spec.data.vocab_size or 256)
    build_optimisers(model, spec.optim, spec.lr_mult)[0].plan_chunk(spec.data.batch_size, spec.data.seq_len)


def check_devices(spec) -> None:
    """Accelerator, precision and device count against this machine (imports torch only to ask
    whether a GPU is there, and only when the settings depend on it)."""
    t = spec.trainer
    wants_gpu = t.accelerator in ("gpu", "cuda")
    if wants_gpu or t.accelerator == "mps" or t.precision in ("16-mixed", "16", "16-true"):
        import torch

        has_gpu = torch.cuda.is_available()
        if wants_gpu and not has_gpu:
            raise ConfigError(f"trainer.accelerator={t.accelerator} but this machine has no CUDA GPU "
                              "(use trainer=cpu or trainer.accelerator=auto)")
        if t.accelerator == "mps" and not torch.backends.mps.is_available():
            raise ConfigError("trainer.accelerator=mps but MPS is not available here")
        on_cpu = t.accelerator == "cpu" or (t.accelerator == "auto" and not has_gpu)
        if on_cpu and t.precision in ("16-mixed", "16"):
            raise ConfigError(f"trainer.precision={t.precision} (float16 autocast) does not run on CPU: "
                              "use bf16-mixed or 32-true")
        if has_gpu and isinstance(t.devices, int) and t.devices > torch.cuda.device_count() and not on_cpu:
            raise ConfigError(f"trainer.devices={t.devices} but this machine has {torch.cuda.device_count()} GPU(s)")


def check_output_dir(path: str | Path) -> None:
    """The dir the command will write (the sweep or run dir) must be creatable and writable,
    with some free space: else one line now, not a traceback in the first job."""
    target = Path(path).expanduser()
    existing = target
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise ConfigError(f"output dir {target}: {existing} is a file, not a folder")
    try:
        st = os.statvfs(existing)
    except OSError as e:
        raise ConfigError(f"output dir {target}: cannot inspect {existing} ({e.strerror})") from None
    if st.f_flag & os.ST_RDONLY:
        raise ConfigError(f"output dir {target} is on a read-only filesystem ({existing}); set hydra.sweep.dir "
                          "(or hydra.run.dir) to a writable place")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"output dir {target} is not writable ({existing}: permission denied); set "
                          "hydra.sweep.dir (or hydra.run.dir) to a writable place")
    free = st.f_bavail * st.f_frsize
    if free < MIN_FREE_BYTES:
        raise ConfigError(f"output dir {target}: no space left on its filesystem ({free // 1024} KiB free in "
                          f"{existing})")


def preflight(overrides: list[str], multirun: bool = True) -> int:
    """Compose and validate every job; raise ConfigError/DataError with one line. Returns job count."""
    from omegaconf import OmegaConf

    from qat_lab.data.check import check_data

    with _config_module():
        count, jobs = expand(sweep_overrides(overrides, multirun))
        checked_data: set[str] = set()
        local = _launcher(jobs[0]) == "basic"  # jobs run on this machine (not on Slurm nodes)
        identities: dict[str, list[str]] = {}
        for job in jobs:
            cfg = _compose(job)
            spec = validate_job(cfg)
            identities.setdefault(_job_identity(cfg, spec), []).append(" ".join(job))
            key = repr(spec.data)
            if key not in checked_data:
                check_data(spec.data)
                checked_data.add(key)
            if local:
                check_devices(spec)
            if multirun and spec.trainer.multi_device and local:
                # Lightning starts extra DDP processes by re-running this command line, which in a
                # local multirun would start the whole sweep again in every process.
                raise ConfigError(f"trainer.devices={spec.trainer.devices} needs one process per device: in a sweep use "
                                  "launcher=slurm with hydra.launcher.tasks_per_node=<devices>, or run single jobs")
        same = [group for group in identities.values() if len(group) > 1]
        if same:
            print(f"qatlab: warning: {sum(len(g) - 1 for g in same)} job(s) would train exactly the same model as "
                  f"another (e.g. '{same[0][0]}' and '{same[0][1]}': a cosine or constant schedule has no warmdown, "
                  "and bits=16 ignores the quantiser settings); drop the axis that changes nothing", file=sys.stderr)
        hydra_cfg = _compose(jobs[0], with_hydra=True).hydra
        out = OmegaConf.select(hydra_cfg, "sweep.dir" if multirun else "run.dir")
        check_output_dir(str(out))
    return count


def _job_identity(cfg, spec) -> str:
    """The composed job's identity (records.identity, as the analysis will see it), as a string."""
    from omegaconf import OmegaConf

    from qat_lab.records.identity import run_identity

    ident = run_identity({"config": OmegaConf.to_container(cfg, resolve=True), "axes": spec.axes()})
    return repr(sorted(ident.items(), key=lambda kv: kv[0]))


def _launcher(job: list[str]) -> str:
    target = str(_compose(job, with_hydra=True).hydra.launcher._target_)
    return "basic" if target.endswith(("BasicLauncher", "LocalLauncher")) else target


CHEAP_AXES = ("bits", "warmdown", "lr_mult", "seed")
"""Axes that change neither a job's length nor its cost: composed once per remaining combination."""
GPU_PEAK_BF16 = 989e12
"""Dense bf16 peak of an H100 SXM (NVIDIA's datasheet), for GPU-hour estimates at 40% MFU."""


def dry_run(overrides: list[str], multirun: bool) -> str:
    """What a command would launch: job count, tokens and training compute, per model."""
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
            from qat_lab.config import build_spec

            spec = build_spec(_compose(job))
            tokens = spec.trainer.steps * spec.data.batch_size * spec.data.seq_len
            flops = tokens * spec.model.flops_per_token(256, spec.data.seq_len)
            row = rows.setdefault(spec.model.name, {"jobs": 0, "steps": set(), "tokens": 0, "flops": 0.0,
                                                    "gpu": spec.trainer.accelerator in ("gpu", "cuda")})
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
              f"(= {flops / (0.4 * GPU_PEAK_BF16 * 3600):.3g} H100-hours at 40% of 989 TFLOP/s bf16)"]
    cpu_flops = sum(r["flops"] for r in rows.values() if not r["gpu"])
    if cpu_flops:
        from qat_lab.cache import cache_root
        from qat_lab.machine import CPU_MFU, cpu_matmul_rate

        rate = cpu_matmul_rate(cache_root(None))
        hours = cpu_flops / (CPU_MFU * rate) / 3600
        lines.append(f"on this machine's CPU: about {_duration(hours)} for the CPU jobs, one after another "
                     f"({CPU_MFU:.0%} of its measured {rate / 1e9:.0f} GFLOP/s fp32 matmul rate; evaluation and "
                     "start-up come on top)")
    return "\n".join(lines)


def _duration(hours: float) -> str:
    return f"{hours * 60:.0f} min" if hours < 2 else f"{hours:.1f} h"


LAST_RUN: dict[str, str | None] = {}
"""Status of the job a single (non-multirun) invocation ran; a failed job makes the exit non-zero."""


def _hydra_main() -> None:
    import hydra

    @hydra.main(config_path="conf", config_name="config", version_base="1.3")
    def _main(cfg) -> None:
        from qat_lab.jobs import run_job

        LAST_RUN["status"] = run_job(cfg).get("status")

    _main()


def _user_overrides(argv: list[str]) -> list[str] | None:
    """The override arguments, or None when Hydra is asked for help/info/config (no preflight)."""
    out = []
    for a in argv:
        if a in ("-m", "--multirun", "--dry-run", "-q", "--quiet"):
            continue
        if a.startswith("-"):
            return None
        out.append(a)
    return out


def usage() -> str:
    from importlib import resources

    conf = resources.files(CONFIG_MODULE)
    groups = sorted(p.name for p in conf.iterdir() if p.is_dir() and not p.name.startswith("_"))
    presets = sorted(p.name[:-5] for p in conf.joinpath("experiment").iterdir() if p.name.endswith(".yaml"))
    return USAGE.format(groups=", ".join(groups), presets=", ".join(presets))


def main() -> None:
    argv = sys.argv[1:]
    if any(a in ("-h", "--help") for a in argv):
        print(usage())
        return
    if "--hydra-help" in argv:
        argv = [("--help" if a == "--hydra-help" else a) for a in argv]
    overrides = _user_overrides(argv)
    multirun = "-m" in argv or "--multirun" in argv
    if "-q" in argv or "--quiet" in argv:
        os.environ["QATLAB_QUIET"] = "1"
    if overrides is not None:
        try:
            with _config_module():  # one Hydra initialisation for normalising and checking
                overrides = normalise(overrides)
                if "--dry-run" in argv:
                    print(dry_run(overrides, multirun))
                    return
                preflight(overrides, multirun)
        except (ConfigError, DataError) as e:
            print(f"qatlab: error: {e}", file=sys.stderr)
            sys.exit(2)
        argv = [a for a in argv if a in ("-m", "--multirun")] + overrides
    sys.argv = [sys.argv[0], *[a for a in argv if a not in ("-q", "--quiet", "--dry-run")]]
    from qat_lab import interrupts

    interrupts.install()
    try:
        _hydra_main()
    except KeyboardInterrupt:
        signum = interrupts.received()
        if signum is None:
            raise
        print(f"qatlab: stopped by {interrupts.name(signum)}; the interrupted job's record says so, re-run the same "
              "command to finish the sweep", file=sys.stderr)
        sys.exit(interrupts.exit_code(signum))
    from qat_lab.jobs import FAILED
    from qat_lab.summary import LAST_SWEEP

    counts = LAST_SWEEP.get("counts", {})
    if FAILED or counts.get("failed") or counts.get("interrupted") or LAST_RUN.get("status") in ("failed",
                                                                                                "interrupted"):
        sys.exit(1)


if __name__ == "__main__":
    main()
