"""The model size ladder: every preset in conf/model/ with its exact parameter counts.

Size is reported as non-embedding parameters (METHOD section 2): every parameter except the token
embedding (which is also the output head when tied). RMSNorm gains count as non-embedding.

    python -m qat_lab.models.ladder [--vocab-size 256]

prints the Markdown table that docs/model_ladder.md contains (tests/test_ladder.py keeps them equal).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from omegaconf import OmegaConf

import qat_lab
from qat_lab.models.gpt import GPT, GPTConfig, count_parameters
from qat_lab.validation import build_dataclass

COLUMNS = ("name", "d_model", "n_layer", "n_head", "non_embedding", "embedding", "total")


def conf_dir() -> Path:
    """The Hydra config folder: the packaged qat_lab/conf if present, else <repo root>/conf."""
    packaged = Path(qat_lab.__file__).parent / "conf"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[3] / "conf"


def load_preset(path: Path) -> GPTConfig:
    """Build the GPTConfig a conf/model/*.yaml file describes."""
    return build_dataclass(OmegaConf.to_container(OmegaConf.load(path), resolve=True), "model", GPTConfig)


def ladder_table(vocab_size: int = 256) -> list[dict]:
    """One row per preset: CPU presets first, then the paper presets, each by increasing size."""
    rows = []
    for path in sorted((conf_dir() / "model").glob("*.yaml")):
        cfg = load_preset(path)
        with torch.device("meta"):  # shapes only: counting a 350M model needs no memory
            counts = count_parameters(GPT(cfg, vocab_size=vocab_size))
        rows.append({"name": cfg.name, "d_model": cfg.d_model, "n_layer": cfg.n_layer,
                     "n_head": cfg.n_head, **counts})
    rows.sort(key=lambda r: (not r["name"].startswith("cpu-"), r["non_embedding"]))
    return rows


def markdown_table(rows: list[dict]) -> str:
    """The rows as a Markdown table (parameter counts with thousands separators)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join(["---"] + ["---:"] * (len(COLUMNS) - 1)) + "|"]
    for r in rows:
        cells = [str(r[c]) if c in ("name", "d_model", "n_layer", "n_head") else f"{r[c]:,}" for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Print the model size ladder as a Markdown table.")
    parser.add_argument("--vocab-size", type=int, default=256, help="vocabulary size (default 256: bytes)")
    args = parser.parse_args(argv)
    print(markdown_table(ladder_table(args.vocab_size)))


if __name__ == "__main__":
    main()
