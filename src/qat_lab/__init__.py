"""qat_lab: quantisation-aware training experiments for small decoder language models."""

__version__ = "0.1.0"
