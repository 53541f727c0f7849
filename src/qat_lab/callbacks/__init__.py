"""What is measured, written and checked while a model trains: one Lightning callback
(TrainingMonitor, monitor.py: the order of everything at step t) calling small plain pieces.

    grid_distance.py  GridProbe: weight-to-grid distance (and the pre-warmdown snapshot)
    validation.py     QuickValidation: a few fixed val batches; LossCurve: curve_loss on one fixed batch
    progress.py       Progress: a line every trainer.log_every steps (console and qatlab.log)
    history.py        History: metrics.csv, one row per step, and the loggers' rows
    divergence.py     DivergenceRule and final_divergence: when a run has diverged
    checkpoint.py     Checkpointer and load_checkpoint: safe, resumable step checkpoints
"""

from qat_lab.callbacks.checkpoint import Checkpointer, load_checkpoint
from qat_lab.callbacks.divergence import Divergence, DivergenceRule, final_divergence
from qat_lab.callbacks.grid_distance import GridProbe
from qat_lab.callbacks.history import History, rows_before
from qat_lab.callbacks.monitor import TrainingMonitor
from qat_lab.callbacks.validation import QuickValidation

__all__ = ["TrainingMonitor", "GridProbe", "QuickValidation", "History", "rows_before", "Divergence",
           "DivergenceRule", "final_divergence", "Checkpointer", "load_checkpoint"]
