"""QuantConfig.of_record: the quantiser a run record describes, old records included."""

from __future__ import annotations

from qat_lab.quant.config import QuantConfig


def test_the_records_own_quant_bits_is_used():
    config = {"quant": {"_target_": "qat_lab.quant.config.QuantConfig", "bits": 4, "probe_bits": 5}}
    assert QuantConfig.of_record(config, {"bits": 4}).grid_bits == 4


def test_records_without_quant_bits_take_the_bits_axis():
    # Records of the first qatlab: the quant group did not read ${bits} (and its _target_ had another path).
    old = {"quant": {"_target_": "qat_lab.quant.QuantConfig", "probe_bits": 5}}
    assert QuantConfig.of_record(old, {"bits": 16}).grid_bits == 5
    assert QuantConfig.of_record(old, {"bits": 6}).grid_bits == 6
    assert QuantConfig.of_record({}, {"bits": 16.0}).grid_bits == 6  # no config logged: the defaults
