"""The accelerate training job: set-up, the loss-agnostic loop, the distillation step, checkpoints,
optimiser, data order, run log, in-loop evaluation and on-policy sampling.

``train(cfg)`` runs one job; ``Trainer`` is the loop object behind it.
"""

from taid_vlm.train.loop import Trainer, train

__all__ = ["Trainer", "train"]
