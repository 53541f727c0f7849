"""Bad input, through the real CLI: one clear line on stderr, exit status 2, and nothing created or
lost, for every value that can be known wrong before training (docs/reliability.md)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from qat_lab.records import read_record
from tests.integration.conftest import run_cli

pytestmark = pytest.mark.slow

# (arguments, a substring the one error line must contain). {empty}, {short}, {txt_dir},
# {empty_dir} and {file} are fixture paths filled in below.
BAD_INPUTS = [
    (["bits=3.5"], "bits=3.5 is not valid"),
    (["bits=1"], "bits=1 is not valid"),
    (["bits=17"], "bits=17 is not valid"),
    (["bits=abc"], "bits=abc is not valid"),
    (["-m", "bits=4,6,3.5"], "bits=3.5"),
    (["warmdown=1.5"], "warmdown=1.5 is not valid"),
    (["warmdown=-0.1"], "warmdown=-0.1 is not valid"),
    (["warmdown=abc"], "warmdown=abc is not valid"),
    (["lr_mult=0"], "lr_mult=0"),
    (["lr_mult=-1"], "lr_mult=-1"),
    (["lr_mult=inf"], "lr_mult=inf"),
    (["seed=-1"], "seed=-1"),
    (["seed=1.5"], "seed=1.5"),
    (["model=nope"], "model=nope is not a known model config"),
    (["model=cpu-xx"], "did you mean model=cpu-xs?"),
    (["optim=sgd"], "optim=sgd is not a known optim config"),
    (["schedule=linear"], "schedule=linear is not a known schedule config"),
    (["data=wiki"], "data=wiki is not a known data config"),
    (["trainer=tpu"], "trainer=tpu is not a known trainer config"),
    (["logger=mlflow"], "logger=mlflow is not a known logger config"),
    (["launcher=k8s"], "launcher=k8s is not a known launcher config"),
    (["experiment=phase9"], "experiment=phase9 is not a known experiment config"),
    (["quant.range=wide"], "quant.range=wide is not one of narrow, full"),
    (["quant.scale_rule=max"], "quant.scale_rule=max"),
    (["quant.granularity=group", "quant.group_size=48"], "quant.group_size=48 does not divide"),
    (["quant.group_size=0"], "quant.group_size=0"),
    (["quant.percentile=0"], "quant.percentile=0"),
    (["quant.probe_bits=16"], "quant.probe_bits=16"),
    (["quant.bits=4"], "quant.bits=4 differs from bits=16"),
    (["optim.matrix_lr=-1"], "optim.matrix_lr=-1 must be positive"),
    (["optim.momentum=1.5"], "optim.momentum=1.5"),
    (["optim.adam_betas=[0.9,1.2]"], "optim.adam_betas"),
    (["optim.ns_steps=0"], "optim.ns_steps=0"),
    (["optim.ns_dtype=fp8"], "optim.ns_dtype=fp8 is not one of auto, bfloat16, float32"),
    (["optim.adjust_lr_fn=moonshot"], "optim.adjust_lr_fn=moonshot"),
    (["+optim.lr=0.1"], "optim.lr is not an option of MuonConfig"),
    (["optim=ief", "optim.memory_budget_mb=1"], "optim.memory_budget_mb=1"),
    (["trainer.steps=0"], "trainer.steps=0"),
    (["trainer.steps=1.5"], "trainer.steps=1.5"),
    (["trainer.precision=fp8"], "trainer.precision=fp8 is not one of"),
    (["trainer.precision=16-mixed"], "does not run on CPU"),
    (["trainer.accelerator=nope"], "trainer.accelerator=nope is not one of"),
    (["trainer.accelerator=gpu"], "no CUDA GPU"),
    (["trainer.devices=0"], "trainer.devices=0"),
    (["-m", "trainer.devices=2", "seed=0,1"], "needs one process per device"),
    (["trainer.strategy=fsdp"], "trainer.strategy=fsdp is not one of auto, ddp"),
    (["trainer.grad_clip=-1"], "trainer.grad_clip=-1"),
    (["trainer.max_loss=0"], "trainer.max_loss=0"),
    (["trainer.val_every=-5"], "trainer.val_every=-5"),
    (["trainer.tokens_per_param=-1"], "trainer.tokens_per_param=-1"),
    (["trainer.stepz=3"], "did you mean trainer.steps?"),
    (["trainer.max_steps=10"], "did you mean trainer.steps?); known: accelerator, accumulate_grad_batches,"),
    (["trainer.log_every_n_steps=5"], "(trainer=cpu; did you mean trainer.log_every?); known: accelerator,"),
    (["optim=adamw", "optim.matrix_lr=0.005"], "optim.matrix_lr is not a setting of AdamWConfig (optim=adamw); known: "
                                               "betas, embed_lr, eps, lr, name, scalar_lr, weight_decay"),
    (["trainer.accumulate_grad_batches=5"], "does not divide data.batch_size=32"),
    (["trainer.profiler=fancy"], "trainer.profiler=fancy is not one of"),
    (["warmdwn=0.1"], "did you mean warmdown?"),
    (["+warmdwn=0.1"], "warmdwn is not a qatlab setting (did you mean warmdown?)"),
    (["schedule.decay_shape=exp"], "schedule.decay_shape=exp is not one of linear, cosine, sqrt"),
    (["schedule.warmup_steps=-1"], "schedule.warmup_steps=-1"),
    (["model.d_model=63"], "model.d_model=63 is not divisible by model.n_head=2"),
    (["model.n_head=3"], "model.d_model=64 is not divisible by model.n_head=3"),
    (["logger.mode=cloud"], "logger.mode=cloud"),
    (["data.seq_len=0"], "data.seq_len=0"),
    (["data.batch_size=-2"], "data.batch_size=-2"),
    (["data.val_fraction=1.5"], "data.val_fraction=1.5"),
    (["data.tokenizer=wordpiece"], "data.tokenizer=wordpiece is not one of"),
    (["data.vocab_size=100"], "data.vocab_size=100 is smaller than the byte tokenizer's 256"),
    (["data=text"], "data=text needs path="),
    (["data=text", "path=/no/such/file.txt"], "path=/no/such/file.txt does not exist"),
    (["data=text", "path={empty}"], "has no non-empty files"),
    (["data=text", "path={short}"], "has only"),
    (["data=hf", "path={txt_dir}"], "has no files matching **/*.parquet"),
    (["data=shards", "path={empty_dir}"], "no token shards match"),
    (["data=shards", "path={file}"], "is not a folder of token shards"),
    (["experiment=phase2"], "experiment=phase2 is a sweep of 720 jobs: run it with -m"),
    (["bits=4", "quant.start=1.5"], "quant.start=1.5 is not valid"),
    (["bits=4", "quant.start_lr_below=0"], "quant.start_lr_below=0 is not valid"),
    (["bits=4", "quant.start_lr_below=1.5"], "quant.start_lr_below=1.5 is not valid"),
    (["quant.start=0.5"], "quant.start=0.5 has no effect at bits=16"),
    (["bits=4", "qat_start=0.5"], "did you mean qat_start=start0.5?"),
    (["ptq.methods=[clip]"], "ptq.methods must include rtn"),
    (["ptq.bits=[16]"], "ptq.bits=16 is not a grid"),
    (["bits=4,6"], "bits=4,6 is a sweep: add -m"),
    (["-m", "warmdown=interval(0.1,0.5)"], "needs a sampling sweeper"),
    (["warmdown=interval(0.1,0.5)"], "warmdown=interval(0.1,0.5): interval sweep needs a sampling sweeper"),
]


@pytest.fixture
def inputs(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "short.txt").write_text("far too short to train on\n")
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("some text\n" * 500)
    (tmp_path / "nothing").mkdir()
    return {"empty": tmp_path / "empty.txt", "short": tmp_path / "short.txt", "txt_dir": tmp_path / "texts",
            "empty_dir": tmp_path / "nothing", "file": tmp_path / "short.txt"}


def test_over_eighty_bad_inputs_are_tabled():
    assert len(BAD_INPUTS) > 80  # docs/reliability.md: "over 80 bad inputs"
    assert len({tuple(a) for a, _ in BAD_INPUTS}) == len(BAD_INPUTS)


def test_every_bad_input_is_one_line_exit_2_and_nothing_created(tmp_path, inputs):
    before = sorted(p.name for p in tmp_path.iterdir())
    cases = [([a.format(**inputs) for a in args], expected) for args, expected in BAD_INPUTS]

    def run(case):
        args, expected = case
        return args, expected, run_cli([*args, "hydra.sweep.dir=sweep", "hydra.run.dir=run"], cwd=tmp_path,
                                       env={"HYDRA_FULL_ERROR": "0"})

    with ThreadPoolExecutor(max_workers=4) as pool:  # each is a process start, mostly import time
        results = list(pool.map(run, cases))
    problems = []
    for args, expected, result in results:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        ok = (result.returncode == 2 and len(lines) == 1 and lines[0].startswith("qatlab: error: ")
              and expected in lines[0])
        if not ok:
            problems.append(f"{args}: exit {result.returncode}, stderr {result.stderr.strip()[-400:]!r}")
    assert not problems, "\n".join(problems)
    # Rejected before any work: no job dir, no sweep dir, nothing else.
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_bad_value_in_a_sweep_loses_nothing(cli, tmp_path):
    """A typo in a re-run of an existing sweep must not touch the records already there."""
    sweep = tmp_path / "sweep"
    (sweep / "bits=4").mkdir(parents=True)
    record = sweep / "bits=4" / "run.json"
    record.write_text("{}")
    result = cli("-m", "bits=4,9", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 2
    assert record.read_text() == "{}"
    assert sorted(p.name for p in sweep.iterdir()) == ["bits=4"]


def test_dry_run_lists_the_grid_and_launches_nothing(cli, tmp_path):
    result = cli("--dry-run", "-m", "experiment=phase2", "hydra.sweep.dir=sweep")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "720 jobs"
    assert "H100-hours" in result.stdout
    assert not (tmp_path / "sweep").exists()


def test_numeric_axes_are_normalised(cli, tmp_path):
    """bits=16.0 is bits=16: the same job dir, so a re-run finds the record."""
    first = cli("-m", "bits=16", "experiment=smoke", "trainer.steps=4", "hydra.sweep.dir=sweep")
    assert first.returncode == 0, first.stderr[-2000:]
    again = cli("-m", "bits=16.0", "experiment=smoke", "trainer.steps=4", "hydra.sweep.dir=sweep")
    assert again.returncode == 0 and "already completed, skipped" in again.stdout
    assert [p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir()] == ["bits=16,experiment=smoke,trainer.steps=4"]


def test_glob_sweeps_use_hydras_sweeper(cli, tmp_path):
    result = cli("--dry-run", "-m", "model=glob(cpu-x*)", "bits=4,16")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "2 jobs" and "| cpu-xs |" in result.stdout


def test_a_single_job_that_fails_while_running_exits_nonzero_with_its_record(cli, tmp_path):
    """Failures only the job itself can see (here: a BPE that turns a long enough text into too
    few val tokens) are recorded, and a single run reports them through its exit code."""
    corpus = tmp_path / "repetitive.txt"
    corpus.write_text("ab " * 1400)  # 4200 bytes pass the byte check; the BPE packs them into ~70 val tokens
    result = cli("data=text", f"data.path={corpus}", "data.tokenizer=bpe", "data.vocab_size=300",
                 f"data.cache_dir={tmp_path / 'cache'}", "experiment=smoke", "hydra.run.dir=run")
    assert result.returncode == 1, result.stderr[-3000:]
    r = read_record(tmp_path / "run")
    assert r["status"] == "failed"
    assert r["error"].startswith("DataError: corpus text:repetitive.txt has only")
    assert "FAILED" in result.stdout and "Traceback" not in result.stderr
