"""Lightning callbacks: what is measured while a model trains.

Callbacks that measure something put it in `pl_module.pending_metrics` at the start of a step
(the state of the weights entering step t); `MetricsHistory`, which must come last, writes one row
per step with those measurements, the train loss and the LR of every parameter group.
"""

from qat_lab.callbacks.checkpoint import StepCheckpoint, load_checkpoint
from qat_lab.callbacks.divergence import DivergenceGuard
from qat_lab.callbacks.grid_distance import GridDistanceMonitor
from qat_lab.callbacks.history import MetricsHistory
from qat_lab.callbacks.validation import QuickValidation

__all__ = ["StepCheckpoint", "load_checkpoint", "DivergenceGuard", "GridDistanceMonitor", "MetricsHistory", "QuickValidation"]
