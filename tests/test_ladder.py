"""The model size ladder: presets hit their nominal sizes and docs/model_ladder.md is not stale."""

import re
from pathlib import Path

import pytest

from qat_lab.models.gpt import GPT, count_parameters
from qat_lab.models.ladder import conf_dir, ladder_table, load_preset, markdown_table

DOC = Path(__file__).resolve().parents[1] / "docs" / "model_ladder.md"
PAPER = ["3m", "5m", "8m", "15m", "30m", "50m", "100m", "175m", "250m", "350m"]
CPU = ["cpu-xs", "cpu-s", "cpu-m", "cpu-l"]


@pytest.fixture(scope="module")
def table():
    return ladder_table()


def test_every_preset_is_present(table):
    assert sorted(r["name"] for r in table) == sorted(PAPER + CPU)
    assert sorted(p.stem for p in (conf_dir() / "model").glob("*.yaml")) == sorted(PAPER + CPU)


def test_file_name_is_preset_name():
    for path in (conf_dir() / "model").glob("*.yaml"):
        assert load_preset(path).name == path.stem


@pytest.mark.parametrize("name", PAPER)
def test_paper_preset_within_12_percent_of_nominal(table, name):
    row = next(r for r in table if r["name"] == name)
    nominal = int(name[:-1]) * 1_000_000
    assert abs(row["non_embedding"] / nominal - 1) <= 0.12, row


def test_paper_presets_grow_deeper_and_wider(table):
    rows = {r["name"]: r for r in table}
    for a, b in zip(PAPER, PAPER[1:]):
        assert rows[b]["non_embedding"] > rows[a]["non_embedding"]
        assert rows[b]["n_layer"] >= rows[a]["n_layer"] and rows[b]["d_model"] >= rows[a]["d_model"]
    for name in PAPER:
        head_dim = rows[name]["d_model"] // rows[name]["n_head"]
        assert head_dim == (32 if name == "3m" else 64)


def test_cpu_presets_strictly_increasing_and_small(table):
    sizes = [next(r for r in table if r["name"] == n)["non_embedding"] for n in CPU]
    assert all(a < b for a, b in zip(sizes, sizes[1:])), sizes
    assert 10_000 <= sizes[0] and sizes[-1] <= 10_000_000


def test_table_counts_equal_count_parameters_of_a_real_model():
    # The ladder counts on the meta device; the smallest preset is cheap enough to build for real.
    path = conf_dir() / "model" / "cpu-xs.yaml"
    row = next(r for r in ladder_table(vocab_size=100) if r["name"] == "cpu-xs")
    counts = count_parameters(GPT(load_preset(path), vocab_size=100))
    assert {k: row[k] for k in counts} == counts
    assert row["embedding"] == 100 * row["d_model"]
    assert row["total"] == row["non_embedding"] + row["embedding"]


def test_yaml_header_comment_states_the_exact_count(table):
    rows = {r["name"]: r for r in table}
    for path in (conf_dir() / "model").glob("*.yaml"):
        first = path.read_text().splitlines()[0]
        m = re.fullmatch(r"# (\S+): .+; non-embedding params = (\d+)", first)
        assert m, first
        assert m.group(1) == path.stem and int(m.group(2)) == rows[path.stem]["non_embedding"]


def test_doc_table_matches_ladder_table(table):
    text = DOC.read_text()
    assert "vocab_size = 256" in text and "python -m qat_lab.models.ladder" in text
    doc_rows = [line for line in text.splitlines() if line.startswith("|")]
    assert "\n".join(doc_rows) == markdown_table(table)


def test_ladder_cli_prints_the_table(capsys, table):
    from qat_lab.models.ladder import main

    main([])
    assert capsys.readouterr().out.strip() == markdown_table(table)

