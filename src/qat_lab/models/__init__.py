"""The decoder LM (gpt.py), its typed shape (config.py, no torch) and the size ladder (ladder.py).

Import the submodule you need: `qat_lab.models.config` stays free of torch.
"""
