"""The decoder LM; size presets are Hydra configs in conf/model/."""

from qat_lab.models.gpt import GPT, GPTConfig, count_parameters, lm_loss

__all__ = ["GPT", "GPTConfig", "count_parameters", "lm_loss"]
