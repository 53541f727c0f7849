"""Run identity and the pairing rule (qat_lab.records.identity)."""

import copy

from qat_lab.records.identity import (ANY, config_fingerprint, extra_axes, fp16_partners, matches, penalties,
                                      quantiser_settings, run_identity, under, varying_keys, why_unpaired)

CONFIG = {
    "model": {"_target_": "x", "name": "cpu-xs", "d_model": 64}, "optim": {"name": "muon", "matrix_lr": 0.02},
    "quant": {"bits": 4, "scale_rule": "absmax", "probe_bits": 6}, "schedule": {"kind": "wsd", "warmdown": 0.33},
    "data": {"corpus": "text", "path": "/a/corp", "glob": "*.txt", "cache_dir": "/c", "seq_len": 128},
    "trainer": {"steps": 150, "checkpoint_every": 0, "progress": False, "threads": None, "compile": False},
    "logger": {"mode": "offline"}, "bits": 4, "warmdown": 0.33, "lr_mult": 1.0, "seed": 0, "path": "/a/corp",
}


def record(bits=4, loss=2.0, status="completed", fingerprint="f" * 64, **changes):
    cfg = copy.deepcopy(CONFIG)
    cfg["bits"] = cfg["quant"]["bits"] = bits
    for key, value in changes.items():
        node = cfg
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    axes = {"bits": bits, "warmdown": cfg["warmdown"], "lr_mult": 1.0, "model": "cpu-xs", "optim": "muon",
            "schedule": "wsd-linear", "seed": cfg["seed"], "steps": 150, "data": "text:corp"}
    return {"status": status, "axes": axes, "config": cfg, "data": {"fingerprint": fingerprint},
            "results": {"val_loss": loss}}


def test_bookkeeping_and_paths_are_not_identity():
    a = run_identity(record())
    b = run_identity(record(**{"trainer.checkpoint_every": 10, "trainer.progress": True, "data.cache_dir": "/d",
                               "logger.mode": "online", "trainer.threads": 2}))
    assert a == b
    assert run_identity(record(**{"data.path": "/b/corp", "path": "/b/corp"})) == a  # same content elsewhere
    assert run_identity(record(fingerprint="e" * 64)) != a  # other content, same folder name
    assert run_identity(record(**{"optim.matrix_lr": 0.04})) != a
    assert "data.path" not in a and "schedule.warmdown" not in a and "quant.bits" not in a and "data" not in a
    assert a["model"] == "cpu-xs" and a["data.fingerprint"] == "f" * 64


def test_numbers_are_canonical():
    assert run_identity(record(**{"lr_mult": 1})) == run_identity(record(**{"lr_mult": 1.0}))


def test_quantiser_settings_do_not_matter_at_bits_16():
    fp = run_identity(record(bits=16))
    assert fp["quant.scale_rule"] is ANY and fp["quant.probe_bits"] == 6
    assert run_identity(record(bits=16, **{"quant.scale_rule": "percentile"})) == fp


def test_penalty_pairs_on_every_other_key():
    recs = [record(16, 2.0), record(4, 2.3), record(4, 2.5, **{"optim.matrix_lr": 0.04}),
            record(16, 2.1, **{"optim.matrix_lr": 0.04}), record(4, 2.4, **{"quant.scale_rule": "percentile"}),
            record(4, 2.9, fingerprint="e" * 64)]
    pen = penalties(recs)
    assert pen[0] == 0.0 and abs(pen[1] - 0.3) < 1e-12 and abs(pen[2] - 0.4) < 1e-12
    assert abs(pen[4] - 0.4) < 1e-12  # the FP16 run is the baseline of every quantiser variant
    assert pen[5] is None  # another corpus: no FP16 partner
    failed_fp = [record(16, 2.0, status="failed"), record(4, 2.3)]
    assert penalties(failed_fp) == [None, None]


def test_varying_and_extra_axes():
    recs = [record(4, **{"optim.matrix_lr": 0.02}), record(4, **{"optim.matrix_lr": 0.04}), record(16)]
    ids = [run_identity(r) for r in recs]
    assert "optim.matrix_lr" in varying_keys(ids) and "bits" in varying_keys(ids)
    assert extra_axes(ids, [r["axes"] for r in recs]) == ["optim.matrix_lr"]
    two_corpora = [record(4, fingerprint="a" * 64), record(4, fingerprint="b" * 64)]
    assert extra_axes([run_identity(r) for r in two_corpora], [r["axes"] for r in two_corpora]) == ["data.fingerprint"]


def test_config_fingerprint_ignores_bookkeeping():
    a = config_fingerprint(record()["config"], {"fingerprint": "f"})
    assert a == config_fingerprint(record(**{"trainer.checkpoint_every": 5})["config"], {"fingerprint": "f"})
    assert a != config_fingerprint(record(**{"optim.matrix_lr": 0.03})["config"], {"fingerprint": "f"})


def test_why_unpaired_names_the_keys_that_differ():
    recs = [record(16, 2.0), record(4, 2.3, **{"optim.matrix_lr": 0.04}), record(4, 2.3, fingerprint="e" * 64),
            record(4, 2.4, seed=1)]
    ids = [run_identity(r) for r in recs]
    ok = [True] * len(recs)
    assert why_unpaired(ids[1], ids, ok) == "no completed bits=16 run with the same optim.matrix_lr"
    assert why_unpaired(ids[2], ids, ok) == "no completed bits=16 run with the same data.fingerprint"
    assert why_unpaired(ids[3], ids, ok) == "no completed bits=16 run with the same seed"
    assert why_unpaired(ids[1], ids, [False, True, True, True]) == "no completed bits=16 run at all"
    partner_failed = [record(16, 2.0, status="failed"), record(4, 2.3)]
    pids = [run_identity(r) for r in partner_failed]
    assert why_unpaired(pids[1], pids, [False, True]).startswith("its bits=16 partner was left out")


def test_indexed_partners_equal_the_pairwise_rule():
    # Every combination of a few keys, some FP16 runs missing: the index must find exactly the
    # partners that matches() defines, first in order, whatever the ANY keys.
    import itertools
    import random

    recs = [record(b, 2.0, **{"optim.matrix_lr": lr, "quant.scale_rule": rule, "seed": s})
            for b, lr, rule, s in itertools.product((16, 6, 4), (0.02, 0.04), ("absmax", "percentile"), (0, 1))]
    random.Random(0).shuffle(recs)
    ids = [run_identity(r) for r in recs]
    ok = [random.Random(i).random() > 0.3 for i in range(len(recs))]
    fp = [j for j, (i, u) in enumerate(zip(ids, ok)) if u and i["bits"] == 16]
    expected = [(i if ok[i] else None) if ident["bits"] == 16
                else next((j for j in fp if matches(ident, ids[j], ignore=("bits",))), None)
                for i, ident in enumerate(ids)]
    assert fp16_partners(ids, ok) == expected
    assert any(e is None for e in expected) and any(e is not None for e in expected)


def test_partners_can_be_restricted_to_the_same_quantiser_settings():
    recs = [record(16, 2.0), record(16, 2.0, **{"quant.scale_rule": "percentile"}),
            record(6, 2.1, **{"quant.scale_rule": "percentile"})]
    ids = [run_identity(r) for r in recs]
    settings = [quantiser_settings(r["config"]) for r in recs]
    assert fp16_partners(ids, [True] * 3)[2] == 0  # for the loss, either FP16 run will do: the first
    same = fp16_partners(ids, [True] * 3, accept=lambda i, j: settings[i] == settings[j])
    assert same[2] == 1  # for the grid distance, only the one measured with the percentile rule
    # bits, probe bits and when QAT starts do not change how a distance is measured
    assert quantiser_settings({"quant": {"bits": 4, "probe_bits": 6, "start": 0.5, "scale_rule": "absmax"}}) == \
        quantiser_settings({"quant": {"bits": 16, "probe_bits": 8, "scale_rule": "absmax"}})


def test_under_looks_up_prefixes():
    assert under("trainer.threads", ("trainer.threads",)) and under("logger.mode", {"logger"})
    assert not under("trainer.threadsx", ("trainer.threads",)) and not under("trainer", ("trainer.threads",))
    assert under("a.b.c", ["a.b"]) and not under("a.bc", ["a.b"])
