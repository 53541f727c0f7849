"""Console entry point `qatlab`: check every job of the sweep, then hand over to Hydra.

Before Hydra launches anything, `preflight` composes the config of every job the command line
describes (the cartesian product of its sweep values) and validates it, so `bits=3.5`, an unknown
model or a missing data file is one clear line and a non-zero exit before any job starts: a typo
in the last value of a sweep never costs the runs before it.
"""

from __future__ import annotations

import itertools
import sys

import hydra
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from qat_lab.errors import ConfigError, DataError

CONFIG_MODULE = "qat_lab.conf"
MAX_PREFLIGHT_JOBS = 256
"""Compose at most this many jobs up front; bigger grids are checked on a covering subset."""


def _expand(overrides: list[str]) -> list[list[str]]:
    """Every job's override list for a multirun command line (Hydra's basic-sweeper semantics)."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    axes = []
    for o in parsed:
        key = o.get_key_element()
        if o.is_sweep_override():
            axes.append([f"{key}={v}" for v in o.sweep_string_iterator()])
        else:
            axes.append([o.input_line])
    jobs = [list(c) for c in itertools.product(*axes)]
    if len(jobs) <= MAX_PREFLIGHT_JOBS:
        return jobs
    # Covering subset: every value of every axis appears in at least one composed job.
    width = max(len(a) for a in axes)
    return [[a[i % len(a)] for a in axes] for i in range(width)]


def _missing_config_line(e: MissingConfigException, overrides: list[str]) -> str:
    group = (e.missing_cfg_file or "").split("/")[0]
    given = next((o for o in overrides if o.split("=")[0].lstrip("+~") == group), e.missing_cfg_file)
    options = ", ".join(e.options or [])
    return f"{given} is not a known {group} config (available: {options})" if group and options else str(e).splitlines()[0]


def validate_job(cfg: DictConfig) -> None:
    from qat_lab.config import build_spec

    build_spec(cfg)


def preflight(overrides: list[str]) -> int:
    """Compose and validate every job; raise ConfigError/DataError with one line. Returns job count."""
    jobs = _expand(overrides)
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        for job in jobs:
            try:
                cfg = compose(config_name="config", overrides=job)
            except MissingConfigException as e:
                raise ConfigError(_missing_config_line(e, job)) from None
            except (HydraException, OmegaConfBaseException) as e:
                raise ConfigError(str(e).strip().splitlines()[0]) from None
            validate_job(cfg)
    GlobalHydra.instance().clear()
    return len(jobs)


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    from qat_lab.train import run_job

    run_job(cfg)


def _user_overrides(argv: list[str]) -> list[str] | None:
    """The override arguments, or None when Hydra is asked for help/info/config (no preflight)."""
    out = []
    for a in argv:
        if a in ("-m", "--multirun"):
            continue
        if a.startswith("-"):
            return None
        out.append(a)
    return out


def main() -> None:
    overrides = _user_overrides(sys.argv[1:])
    if overrides is not None:
        try:
            preflight(overrides)
        except (ConfigError, DataError) as e:
            print(f"qatlab: error: {e}", file=sys.stderr)
            sys.exit(2)
    _hydra_main()
    from qat_lab.summary import LAST_SWEEP

    if LAST_SWEEP.get("counts", {}).get("failed") or LAST_SWEEP.get("counts", {}).get("interrupted"):
        sys.exit(1)


if __name__ == "__main__":
    main()
