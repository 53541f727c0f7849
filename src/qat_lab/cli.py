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
import dataclasses
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
    value = _plain_number(text)
    if value is None:
        return text
    if isinstance(value, int):
        return str(value)
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
    """Hydra's "Could not override 'x'" as one line: for a key of a config group, the dataclass the
    job's choice of that group builds (optim=adamw -> AdamWConfig), the nearest of its settings and
    all of them; for other keys, the nearest existing key."""
    import re

    m = re.search(r"Could not override '([^']+)'", message)
    if not m:
        return _one_line(message)
    key = m.group(1)
    given = next((o for o in job if o.split("=")[0].lstrip("+~") == key), key)
    group, _, name = key.partition(".")
    built = _group_dataclass(group, [o for o in job if o != given]) if name and "." not in name else None
    if built is not None:
        cls, choice = built
        known = sorted(f.name for f in dataclasses.fields(cls))
        near = difflib.get_close_matches(name, known, n=1)
        notes = ([f"{group}={choice}"] if choice else []) + ([f"did you mean {group}.{near[0]}?"] if near else [])
        aside = f" ({'; '.join(notes)})" if notes else ""
        return f"{given}: {key} is not a setting of {cls.__name__}{aside}; known: {', '.join(known)}"
    if not name:  # a top-level key
        from qat_lab.config import TOP_LEVEL

        near = difflib.get_close_matches(key, TOP_LEVEL, n=1)
        hint = f" (did you mean {near[0]}?)" if near else ""
        return f"{given}: {key} is not a qatlab setting{hint}; top-level keys: {', '.join(TOP_LEVEL)}"
    known = [k for k in _known_keys(key) if k != key]
    near = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {near[0]}?)" if near else ""
    return f"{given}: {key} is not a setting{hint}"


def _group_dataclass(group: str, job: list[str]):
    """(the dataclass `group` builds in this job, the group's chosen option), or None: the job is
    composed without its bad override (the default config if that fails too)."""
    from hydra import compose
    from hydra.utils import get_class

    for overrides, own in ((job, True), ([], False)):
        try:
            cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
        except Exception:  # another bad override: the default config still names the group's class
            continue
        node = cfg.get(group)
        target = node.get("_target_") if hasattr(node, "get") else None
        if not target:
            return None
        try:
            cls = get_class(str(target))
        except Exception:
            return None
        if not dataclasses.is_dataclass(cls):
            return None
        return cls, (cfg.hydra.runtime.choices.get(group) if own else None) or None
    return None


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
        sweeps = [o for o in _parse(overrides) if o.is_sweep_override()]
        for o in sweeps:
            if not o.is_discrete_sweep():  # -m would not help: say what would
                raise ConfigError(_needs_sampler(o))
        if sweeps:
            raise ConfigError(f"{sweeps[0].input_line} is a sweep: add -m (qatlab -m {' '.join(overrides)})")
        if params:
            preset = next((o for o in overrides if o.startswith("experiment=")), "this preset")
            raise ConfigError(f"{preset} is a sweep of {_count(params)} jobs: run it with -m (qatlab -m "
                              f"{' '.join(overrides)}) or list it with --dry-run -m")
        return overrides
    return [f"{k}={v}" for k, v in params.items()] + overrides


def _count(params: dict) -> int:
    return math.prod(len(list(o.sweep_string_iterator())) if o.is_sweep_override() else 1
                     for o in _parse([f"{k}={v}" for k, v in params.items()]))


def _needs_sampler(o) -> str:
    return (f"{o.input_line}: {o.value_type.name.lower().replace('_', ' ')} needs a sampling sweeper (e.g. Optuna); "
            "qatlab's sweeps take lists: a,b,c, range(...), glob(...)")


def sweep_axes(overrides: list[str]) -> dict[str, list[str]]:
    """{key: its distinct job overrides ('bits=4', ...)}, in command-line order, as Hydra's
    BasicSweeper reads the command: discrete sweeps (a,b / range / glob / choice) only, a later
    value of a key wins. A value listed twice (bits=16.0,16 once normalised) is one job dir, so
    it is one job here."""
    axes: dict[str, list[str]] = {}
    for o in _parse(overrides):
        key = o.get_key_element()
        if o.is_sweep_override():
            if not o.is_discrete_sweep():
                raise ConfigError(_needs_sampler(o))
            values = list(dict.fromkeys(f"{key}={v}" for v in o.sweep_string_iterator()))
            if not values:
                raise ConfigError(f"{o.input_line} matches no value")
            axes[key] = values
        else:
            axes[key] = [o.input_line]
    return axes


def expand(overrides: list[str]) -> tuple[int, list[list[str]]]:
    """(number of distinct jobs, the jobs to compose): every job when there are at most
    MAX_PREFLIGHT_JOBS, else a covering subset in which every value of every axis appears
    (sweep_axes: Hydra's BasicSweeper semantics)."""
    lists = list(sweep_axes(overrides).values())
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


def preflight(overrides: list[str], multirun: bool = True, given: list[str] | None = None) -> int:
    """Compose and validate every job; raise ConfigError/DataError with one line. Returns the
    number of distinct jobs (job dirs). `given`: the command line before normalise(), for the
    words of the warning about jobs that would train the same model."""
    from omegaconf import OmegaConf

    from qat_lab.data.check import check_data

    with _config_module():
        swept = sweep_overrides(overrides, multirun)
        count, jobs = expand(swept)
        checked_data: set[str] = set()
        local = _launcher(jobs[0]) == "basic"  # jobs run on this machine (not on Slurm nodes)
        entries: list[_Job] = []
        for job in jobs:
            cfg = _compose(job)
            spec = validate_job(cfg)
            entries.append(_Job(job, _job_identity(cfg, spec), spec.data))
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
        hydra_cfg = _compose(jobs[0], with_hydra=True).hydra
        out = OmegaConf.select(hydra_cfg, "sweep.dir" if multirun else "run.dir")
        check_output_dir(str(out))
        warning = duplicates_warning(entries, swept, given)
    if warning:
        print(warning, file=sys.stderr)
    return count


# --- jobs that would train the same model -------------------------------------------------------

DATA_LOCATION = ("path", "data.path", "data.glob", "data.train_glob", "data.val_glob", "data.tokenizer_file")
"""Where the data is read from: records.identity replaces these by content fingerprints."""


@dataclasses.dataclass
class _Job:
    """One job of the command: its overrides, its identity without the data label, its data."""

    overrides: list[str]
    identity: dict
    data: object

    @property
    def key(self) -> str:
        return repr(sorted(self.identity.items(), key=lambda kv: kv[0]))

    @property
    def name(self) -> str:
        """The job as the user wrote it, without bookkeeping (hydra.*) overrides."""
        return " ".join(o for o in self.overrides if not o.lstrip("+~").startswith(("hydra.", "hydra/")))


def _job_identity(cfg, spec) -> dict:
    """The composed job's identity (records.identity, as the analysis will see it) before its data
    is read: the `data` label (text:corp) is left out, as the record leaves it out for the content
    fingerprint, which _same_model reads only for jobs equal in everything else."""
    from omegaconf import OmegaConf

    return _identity(OmegaConf.to_container(cfg, resolve=True), spec.axes())


def _identity(config: dict, axes: dict) -> dict:
    from qat_lab.records.identity import run_identity

    ident = run_identity({"config": config, "axes": axes})
    ident.pop("data", None)
    return ident


def _data_content(data) -> tuple:
    """What the run record identifies this data by (records.identity.DATA_FACTS): the corpus
    fingerprint the data module records (the SHA-256 of every document of a text corpus, the
    sampled fingerprint of HF files and shards) and the SHA-256 of a tokenizer file."""
    from qat_lab.data.fingerprint import corpus_fingerprint

    try:
        fingerprint = corpus_fingerprint(data)
        tokenizer = None
        if data.tokenizer == "file":
            from qat_lab.data.bpe import HFTokenizer

            tokenizer = HFTokenizer.from_file(data.tokenizer_file or str(Path(data.path) / "tokenizer.json")).sha256
    except Exception:  # noqa: BLE001 - unreadable here (the dry run checks no data): not known to be the same data
        return ("unread", repr(data))
    return fingerprint, tokenizer


def _same_model(entries: list[_Job]) -> list[list[_Job]]:
    """Groups of jobs with equal identities, data by content: jobs equal in everything but where
    their data is read from are told apart by content fingerprint (read once per data config,
    and only for them); two paths to the same content are the same data."""
    groups: dict[str, list[_Job]] = {}
    for e in entries:
        groups.setdefault(e.key, []).append(e)
    content: dict[str, tuple] = {}
    out = []
    for group in groups.values():
        if len(group) < 2:
            continue
        if len({repr(e.data) for e in group}) == 1:
            out.append(group)
            continue
        by_content: dict[tuple, list[_Job]] = {}
        for e in group:
            key = repr(e.data)
            if key not in content:
                content[key] = _data_content(e.data)
            by_content.setdefault(content[key], []).append(e)
        out += [g for g in by_content.values() if len(g) > 1]
    return out


def _why_same(a: _Job, b: _Job) -> str:
    """Which keys differ in the two jobs' commands but not in their composed configs, and why."""
    from qat_lab.records.identity import BOOKKEEPING, FP_BITS, under

    def values(job: _Job) -> dict[str, str]:
        return {k.lstrip("+~"): v for k, _, v in (o.partition("=") for o in job.overrides)
                if not k.lstrip("+~").startswith(("hydra.", "hydra/"))}

    va, vb = values(a), values(b)
    keys = [k for k in dict.fromkeys([*va, *vb]) if va.get(k) != vb.get(k)]
    ident = a.identity
    reasons = []
    for k in keys:
        if k == "warmdown" and ident.get("schedule.kind") in ("cosine", "constant"):
            reasons.append(f"schedule={ident['schedule.kind']} has no warmdown window")
        elif (k.startswith("quant.") or k == "qat_start") and ident.get("bits") == FP_BITS:
            reasons.append("bits=16 does not quantise, so the quantiser settings change nothing")
        elif k in DATA_LOCATION or k == "data":
            reasons.append("both hold the same content, and data is identified by content")
        elif under(k, BOOKKEEPING):
            reasons.append(f"{k} is bookkeeping: what is measured, logged or kept, not the model")
    shown = ", ".join(keys) or "nothing"
    why = f" ({'; '.join(dict.fromkeys(reasons))})" if reasons else ""
    return f"{shown} differ{'s' if len(keys) == 1 else ''} in the command but not in the composed config{why}"


def _listed_twice(swept: list[str], given: list[str] | None) -> tuple[int, str]:
    """(jobs Hydra launches twice because a sweep names one value twice, e.g. bits=16.0,16 once
    normalised; the words for it). Each runs once: the second finds the first one's record."""
    last = {o.get_key_element(): o for o in _parse(swept)}  # a later value of a key wins
    full = distinct = 1
    example = ""
    for key, o in last.items():
        if not (o.is_sweep_override() and o.is_discrete_sweep()):
            continue
        values = list(o.sweep_string_iterator())
        full, distinct = full * len(values), distinct * len(set(values))
        if len(set(values)) < len(values) and not example:
            twice = next(v for v in values if values.count(v) > 1)
            original = [t.partition("=")[2] for t in (given or []) if t.partition("=")[0].lstrip("+~") == key]
            forms = []
            if original and "," in original[-1]:
                raw = original[-1].split(",")
                if len(raw) == len(values):
                    forms = list(dict.fromkeys(r for r, v in zip(raw, values) if v == twice))
            example = (" and ".join(f"{key}={f}" for f in forms) + " are the same value" if len(forms) > 1
                       else f"{key}={twice} is listed twice")
    return full - distinct, example


def duplicates_warning(entries: list[_Job], swept: list[str], given: list[str] | None = None) -> str | None:
    """The one warning line about jobs that would train exactly the same model as another: the
    count, an example pair, and what makes them the same; None when every job is its own."""
    parts = []
    same = _same_model(entries)
    if same:
        a, b = same[0][0], same[0][1]
        parts.append(f"{sum(len(g) - 1 for g in same)} job(s) would train exactly the same model as another "
                     f"(e.g. '{a.name}' and '{b.name}': {_why_same(a, b)}); drop the axis that changes nothing")
    twice, example = _listed_twice(swept, given)
    if twice:
        parts.append(f"{twice} job(s) are listed twice ({example}): one job dir each, trained once")
    return "qatlab: warning: " + "; ".join(parts) if parts else None


def _launcher(job: list[str]) -> str:
    target = str(_compose(job, with_hydra=True).hydra.launcher._target_)
    return "basic" if target.endswith(("BasicLauncher", "LocalLauncher")) else target


CHEAP_AXES = ("bits", "warmdown", "lr_mult", "seed")
"""Axes that change neither a job's length nor its cost: composed once per remaining combination."""
GPU_PEAK_BF16 = 989e12
"""Dense bf16 peak of an H100 SXM (NVIDIA's datasheet), for GPU-hour estimates at 40% MFU."""


def dry_run(overrides: list[str], multirun: bool, given: list[str] | None = None) -> str:
    """What a command would launch: distinct jobs (one per job dir, as a real run makes them),
    tokens and training compute, per model. Jobs that would train the same model get the
    preflight's warning line (on stderr)."""
    from qat_lab.config import build_spec

    with _config_module():
        swept = sweep_overrides(overrides, multirun)
        axes = sweep_axes(swept)
        cheap = [v for k, v in axes.items() if k in CHEAP_AXES]
        per_combo = math.prod(len(v) for v in cheap)
        rows: dict[str, dict] = {}
        entries: list[_Job] = []
        for combo in itertools.product(*[v for k, v in axes.items() if k not in CHEAP_AXES]):
            job = list(combo) + [v[0] for v in cheap]
            cfg = _compose(job)
            spec = build_spec(cfg)
            entries += _cheap_variants(cfg, spec, list(combo), cheap, order=list(axes))
            tokens = spec.trainer.steps * spec.data.batch_size * spec.data.seq_len
            flops = tokens * spec.model.flops_per_token(256, spec.data.seq_len)
            row = rows.setdefault(spec.model.name, {"jobs": 0, "steps": set(), "tokens": 0, "flops": 0.0,
                                                    "gpu": spec.trainer.accelerator in ("gpu", "cuda")})
            row["jobs"] += per_combo
            row["steps"].add(spec.trainer.steps)
            row["tokens"] += tokens * per_combo
            row["flops"] += flops * per_combo
        warning = duplicates_warning(entries, swept, given)
    if warning:
        print(warning, file=sys.stderr)
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


AXIS_MIRRORS = {"quant.bits", "schedule.warmdown"}
"""The group keys that read a cheap axis by interpolation (conf/quant, conf/schedule)."""


def _cheap_variants(cfg, spec, combo: list[str], cheap: list[list[str]], order=()) -> list[_Job]:
    """The dry run's jobs of one composed combination, one per combination of the cheap axes'
    values, each with its identity. The axes are plain top-level values (the groups read them
    only through AXIS_MIRRORS, which identities drop), so each identity is the composed one with
    the values set: 720 jobs of a preset cost a few ms. A value that is not a plain number, or a
    config that reads an axis anywhere else, is composed job by job instead. `order`: the keys in
    command-line order (the preflight's order of a job's overrides)."""
    import re

    from omegaconf import OmegaConf

    from qat_lab.config import build_spec
    from qat_lab.records.identity import flatten

    config = OmegaConf.to_container(cfg, resolve=True)
    readers = {k for k, v in flatten(OmegaConf.to_container(cfg, resolve=False)).items()
               if isinstance(v, str) and "${" in v and re.search(r"\b(bits|warmdown|lr_mult|seed)\b", v)}
    base_axes = spec.axes()
    rank = {k: i for i, k in enumerate(order)}
    out = []
    for values in itertools.product(*cheap):
        job = combo + list(values)
        job.sort(key=lambda t: rank.get(t.partition("=")[0].lstrip("+~"), len(rank)))
        numbers = {k: _plain_number(v) for k, _, v in (t.partition("=") for t in values)}
        if readers - AXIS_MIRRORS or None in numbers.values():
            exact = _compose(job)
            out.append(_Job(job, _job_identity(exact, build_spec(exact)), spec.data))
        else:
            out.append(_Job(job, _identity({**config, **numbers}, {**base_axes, **numbers}), spec.data))
    return out


def _plain_number(text: str) -> int | float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    if not math.isfinite(value):
        return None
    return int(value) if value.is_integer() and abs(value) < 2**53 else value


def _duration(hours: float) -> str:
    seconds = hours * 3600
    if seconds < 1:
        return "under a second"
    if seconds < 60:
        return f"{seconds:.0f} s"
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
                given, overrides = overrides, normalise(overrides)
                if "--dry-run" in argv:
                    print(dry_run(overrides, multirun, given))
                    return
                preflight(overrides, multirun, given)
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
        jobs = sys.modules.get("qat_lab.jobs")  # not imported: no job had started
        said = ("the interrupted job's record says so" if jobs is not None and jobs.INTERRUPTED
                else "no job had written a record yet")
        print(f"qatlab: stopped by {interrupts.name(signum)}; {said}, re-run the same command to finish the sweep",
              file=sys.stderr)
        sys.exit(interrupts.exit_code(signum))
    from qat_lab.jobs import FAILED
    from qat_lab.summary import LAST_SWEEP

    counts = LAST_SWEEP.get("counts", {})
    if FAILED or counts.get("failed") or counts.get("interrupted") or LAST_RUN.get("status") in ("failed",
                                                                                                "interrupted"):
        sys.exit(1)


if __name__ == "__main__":
    main()
