"""The accelerate training job: set-up, the loss-agnostic loop, the distillation step, checkpoints,
optimiser, data order, run log, in-loop evaluation and on-policy sampling.

``train(cfg)`` runs one job; ``Trainer`` is the loop object behind it.
"""

from typing import Any

__all__ = ["Trainer", "train"]


def __getattr__(name: str) -> Any:
    # Lazy: `taid-vlm plan` imports taid_vlm.train.plan, which must not pull in the whole training
    # stack (accelerate, the adapters, the models) through this package's __init__.
    if name in __all__:
        from taid_vlm.train import loop

        return getattr(loop, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
