"""Training: the loop (`loop.Trainer`) and the probes it runs (`probes/`).

The trainer owns a network, an optimizer, a batch function and probes; its whole state is a `state_dict()`, so a
run can checkpoint and resume bit for bit. It knows no files (smoothnorm.runs stores runs). Modules here import
from smoothnorm.measure, smoothnorm.nn, smoothnorm.optim and smoothnorm._validate.
"""

from smoothnorm.train.loop import BatchFn, Trainer

__all__ = ["BatchFn", "Trainer"]
