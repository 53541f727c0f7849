"""Config composition and validation (qat_lab.config, qat_lab.cli.preflight / _expand)."""

from __future__ import annotations

import importlib.resources
import itertools
from pathlib import Path

import hydra
import pytest
from hydra.core.global_hydra import GlobalHydra

from qat_lab import cli
from qat_lab.config import RunSpec, build_spec
from qat_lab.errors import ConfigError, DataError

CONF_DIR = Path(str(importlib.resources.files("qat_lab.conf")))
GROUPS = ("model", "quant", "qat_start", "ptq", "optim", "schedule", "data", "trainer", "logger", "launcher", "experiment")
AXES = ("bits", "warmdown", "lr_mult", "model", "optim", "schedule", "seed", "steps", "data")


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def _compose(overrides: list[str]):
    GlobalHydra.instance().clear()
    with hydra.initialize_config_module(config_module="qat_lab.conf", version_base="1.3"):
        return hydra.compose("config", overrides=overrides)


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    f = tmp_path / "notes.txt"
    f.write_text("a small corpus of text\n" * 20)
    return f


def _group_cases() -> list[tuple[str, str]]:
    return [(g, o) for g in GROUPS for o in _options(g)]


def test_every_group_has_options_on_disk():
    for group in GROUPS:
        assert _options(group), f"config group {group}/ has no yaml files"
    # The paper ladder and the CPU presets are all there.
    assert {"3m", "15m", "100m", "350m", "cpu-xs", "cpu-s"} <= set(_options("model"))


@pytest.mark.parametrize(("group", "option"), _group_cases(), ids=lambda v: str(v))
def test_every_option_composes_and_builds(group: str, option: str, text_file: Path):
    overrides = [f"{group}={option}"]
    if group == "qat_start":
        overrides.append("bits=4")  # a QAT start means nothing at bits=16 (refused there)
    if group == "data" and option in ("text", "hf"):
        overrides.append(f"path={text_file}")
    if group == "data" and option == "shards":
        overrides.append(f"path={text_file.parent}")  # an existing folder; setup would read its shards
    spec = build_spec(_compose(overrides))
    assert isinstance(spec, RunSpec)
    axes = spec.axes()
    for key in AXES:
        assert key in axes, f"{group}={option}: axes() lacks {key}"
    if group == "model":
        assert axes["model"] == option  # the preset's name field matches its file name
    if group == "optim":
        assert axes["optim"] == option
    if group == "data":
        assert spec.data.corpus == option
        user_data = {"text": text_file.name, "hf": text_file.name, "shards": text_file.parent.name}
        expected = f"{option}:{user_data[option]}" if option in user_data else option
        assert axes["data"] == expected
        assert axes["tokenizer"] == ("file" if option == "shards" else "bytes")
    if group == "data" and option == "text":
        assert spec.data.path == str(text_file)  # top-level `path` reaches data.path


@pytest.mark.parametrize("schedule", _options("schedule"))
@pytest.mark.parametrize("warmdown", [0.1, 0.5])
def test_top_level_warmdown_reaches_schedule(schedule: str, warmdown: float):
    spec = build_spec(_compose([f"schedule={schedule}", f"warmdown={warmdown}"]))
    assert spec.warmdown == warmdown
    assert spec.schedule.warmdown == warmdown
    assert spec.axes()["warmdown"] == warmdown


def test_top_level_axes_reach_spec():
    spec = build_spec(_compose(["bits=6", "lr_mult=2", "seed=3", "trainer.steps=7", "model=cpu-s", "optim=adamw"]))
    axes = spec.axes()
    assert (axes["bits"], axes["lr_mult"], axes["seed"], axes["steps"]) == (6, 2.0, 3, 7)
    assert (axes["model"], axes["optim"]) == ("cpu-s", "adamw")


BAD_VALUES = [
    (["bits=3.5"], ConfigError, "bits=3.5"),
    (["bits=1"], ConfigError, "bits=1"),
    (["bits=17"], ConfigError, "bits=17"),
    (["warmdown=1.5"], ConfigError, "warmdown=1.5"),
    (["warmdown=-0.1"], ConfigError, "warmdown=-0.1"),
    (["lr_mult=0"], ConfigError, "lr_mult=0"),
    (["seed=-1"], ConfigError, "seed=-1"),
    (["trainer.steps=0"], ConfigError, "trainer.steps=0"),
    (["data.seq_len=0"], ConfigError, "data.seq_len=0"),
    (["optim.matrix_lr=-1"], ConfigError, "optim.matrix_lr=-1"),
    (["quant.range=wide"], ConfigError, "quant.range=wide"),
    (["data=text", "path=/nonexistent"], DataError, "path=/nonexistent"),
]


@pytest.mark.parametrize(("overrides", "error", "key"), BAD_VALUES, ids=lambda v: str(v))
def test_bad_value_is_one_line_naming_the_key(overrides, error, key):
    cfg = _compose(overrides)
    with pytest.raises(error) as info:
        build_spec(cfg)
    assert type(info.value) is error
    message = str(info.value)
    assert "\n" not in message
    assert key in message


def test_preflight_counts_every_job():
    assert cli.preflight(["bits=4,6", "warmdown=0.1,0.33"]) == 4
    assert cli.preflight(["bits=8"]) == 1


def test_preflight_rejects_a_bad_value_late_in_the_sweep():
    with pytest.raises(ConfigError) as info:
        cli.preflight(["bits=4,3.5"])
    assert "3.5" in str(info.value)
    assert "\n" not in str(info.value)


def test_preflight_unknown_model_lists_the_available_ones():
    with pytest.raises(ConfigError) as info:
        cli.preflight(["model=nope"])
    message = str(info.value)
    assert "\n" not in message
    assert "nope" in message
    for name in _options("model"):
        assert name in message


def test_preflight_missing_data_path_is_a_data_error():
    with pytest.raises(DataError) as info:
        cli.preflight(["data=text", "path=/nonexistent"])
    assert "/nonexistent" in str(info.value)


def test_expand_small_grid_is_the_full_product():
    count, jobs = cli.expand(["bits=4,6,16", "warmdown=0.1,0.33", "model=cpu-s"])
    assert count == len(jobs) == 6
    assert {tuple(j) for j in jobs} == {
        (f"bits={b}", f"warmdown={w}", "model=cpu-s") for b, w in itertools.product((4, 6, 16), (0.1, 0.33))
    }


def test_expand_big_grid_is_a_covering_subset():
    bits = ["2", "3", "4", "5", "6", "7", "8", "16"]
    warmdowns = ["0.1", "0.2", "0.33", "0.5"]
    n_seeds = cli.MAX_PREFLIGHT_JOBS // (len(bits) * len(warmdowns)) + 1
    seeds = [str(s) for s in range(n_seeds)]
    assert len(bits) * len(warmdowns) * len(seeds) > cli.MAX_PREFLIGHT_JOBS
    overrides = ["bits=" + ",".join(bits), "warmdown=" + ",".join(warmdowns), "seed=" + ",".join(seeds), "model=cpu-s"]
    count, jobs = cli.expand(overrides)
    assert count == len(bits) * len(warmdowns) * len(seeds)
    assert 0 < len(jobs) <= cli.MAX_PREFLIGHT_JOBS
    for job in jobs:
        assert len(job) == 4 and job[3] == "model=cpu-s"
    for position, (key, values) in enumerate((("bits", bits), ("warmdown", warmdowns), ("seed", seeds))):
        seen = {job[position] for job in jobs}
        assert seen == {f"{key}={v}" for v in values}


def test_preflight_big_grid_still_catches_the_last_value(monkeypatch):
    # A small cap keeps this fast; the covering subset must still reach the bad last value.
    monkeypatch.setattr(cli, "MAX_PREFLIGHT_JOBS", 3)
    assert cli.preflight(["bits=4,6", "warmdown=0.1,0.2,0.33"]) == 6  # every job counted, 3 composed
    with pytest.raises(ConfigError) as info:
        cli.preflight(["bits=4,6", "warmdown=0.1,0.2,1.5"])
    assert "warmdown=1.5" in str(info.value)
