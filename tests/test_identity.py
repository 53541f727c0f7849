"""Run identity and the pairing rule (qat_lab.records.identity)."""

import copy

from qat_lab.records.identity import (ANY, config_fingerprint, extra_axes, fp16_partners, penalties, run_identity,
                                      varying_keys)

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
