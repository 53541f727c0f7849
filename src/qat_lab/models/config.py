"""The shape of the decoder LM (the `model` config group), and its parameter counts by arithmetic.

Kept apart from models/gpt.py so that validating a sweep and listing it (`--dry-run`) never
imports torch; tests/test_model.py checks the counts against a built model for every preset.
"""

from __future__ import annotations

from dataclasses import dataclass

from qat_lab import validation as v
from qat_lab.errors import ConfigError


@dataclass
class GPTConfig:
    """Shape of the model. Presets live in conf/model/; docs/model_ladder.md lists exact counts."""

    name: str = "custom"
    """Preset name, recorded as the `model` sweep axis."""
    d_model: int = 128
    """Residual stream width."""
    n_layer: int = 4
    """Number of transformer blocks."""
    n_head: int = 4
    """Query heads; head_dim = d_model / n_head."""
    n_kv_head: int | None = None
    """Key/value heads for grouped-query attention; None means n_head (plain multi-head)."""
    mlp_ratio: float = 4.0
    """MLP hidden width as a multiple of d_model."""
    rope_base: float = 10000.0
    """Rotary embedding base frequency."""
    logit_softcap: float | None = 30.0
    """Logits become cap * tanh(logits / cap); None disables the cap."""
    tie_embeddings: bool = True
    """Share the input embedding with the output head (the head is then not a separate tensor)."""
    norm_eps: float = 1e-6
    """RMSNorm epsilon."""

    def __post_init__(self) -> None:
        for key in ("d_model", "n_layer", "n_head"):
            setattr(self, key, v.integer(f"model.{key}", getattr(self, key), 1))
        if self.n_kv_head is not None:
            self.n_kv_head = v.integer("model.n_kv_head", self.n_kv_head, 1)
        if not v.is_number(self.mlp_ratio) or int(self.mlp_ratio * self.d_model) <= 0:
            raise ConfigError(f"model.mlp_ratio={self.mlp_ratio} must be positive (MLP width mlp_ratio*d_model >= 1)")
        v.positive("model.rope_base", self.rope_base)
        v.positive("model.norm_eps", self.norm_eps)
        if self.logit_softcap is not None:
            v.positive("model.logit_softcap", self.logit_softcap)
        v.boolean("model.tie_embeddings", self.tie_embeddings)
        if self.d_model % self.n_head:
            raise ConfigError(f"model.d_model={self.d_model} is not divisible by model.n_head={self.n_head}")
        if (self.d_model // self.n_head) % 2:
            raise ConfigError(f"model head_dim={self.d_model // self.n_head} must be even for rotary embedding")
        if self.n_head % self.kv_heads:
            raise ConfigError(f"model.n_head={self.n_head} is not a multiple of model.n_kv_head={self.kv_heads}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def mlp_hidden(self) -> int:
        return int(self.mlp_ratio * self.d_model)

    def block_matrices(self) -> dict[str, tuple[int, int]]:
        """(out, in) of every 2-D weight in one block: the matrices Muon updates and QAT quantises."""
        d, q, kv, f = self.d_model, self.n_head * self.head_dim, self.kv_heads * self.head_dim, self.mlp_hidden
        return {"attn.q": (q, d), "attn.k": (kv, d), "attn.v": (kv, d), "attn.proj": (d, q),
                "mlp.fc": (f, d), "mlp.proj": (d, f)}

    def parameter_counts(self, vocab_size: int) -> dict[str, int]:
        """The same numbers as models.gpt.count_parameters on a built model, without building it.

        Non-embedding: the block matrices, four RMSNorm gains per block (attention, MLP, q and k
        norms) and the embedding and final norms. Embedding: the table, plus the head if untied.
        """
        matrices = sum(o * i for o, i in self.block_matrices().values())
        norms = 2 * self.d_model + 2 * self.head_dim
        non_embedding = self.n_layer * (matrices + norms) + 2 * self.d_model
        embedding = vocab_size * self.d_model * (1 if self.tie_embeddings else 2)
        return {"non_embedding": non_embedding, "embedding": embedding, "total": non_embedding + embedding}

    def matmul_params(self, vocab_size: int) -> int:
        """Parameters in a matmul per token: the blocks' matrices and the head."""
        return self.n_layer * sum(o * i for o, i in self.block_matrices().values()) + vocab_size * self.d_model

    def flops_per_token(self, vocab_size: int, seq_len: int) -> float:
        """Training FLOPs per token: 6 x matmul params + attention scores (PaLM appendix B convention)."""
        return 6.0 * self.matmul_params(vocab_size) + 12.0 * self.n_layer * self.d_model * seq_len
