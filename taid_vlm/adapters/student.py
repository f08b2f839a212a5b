"""Can this adapter be a student? The per-part switches (``student.train_vision/projector/lm``) and
per-part learning rates act on ``Adapter.parts()``: a parameter outside every part would be neither
frozen nor given to the optimizer, and one in two parts would get two learning rates. A family whose
parts do not split its model exactly is refused at start-up, with the parameters that break it."""

from __future__ import annotations

from torch import nn

from taid_vlm.adapters.base import Adapter


def part_coverage(model: nn.Module, parts: dict[str, nn.Module]) -> tuple[list[str], list[str]]:
    """``(outside, shared)``: names of ``model``'s parameters in no part, and in more than one part
    (tied weights count once: a parameter is one object however many names it has)."""
    owners: dict[int, set[str]] = {}
    for part, module in parts.items():
        for p in module.parameters():
            owners.setdefault(id(p), set()).add(part)
    outside = [name for name, p in model.named_parameters() if not owners.get(id(p))]
    shared = [name for name, p in model.named_parameters() if len(owners.get(id(p), ())) > 1]
    return outside, shared


def check_student(adapter: Adapter) -> None:
    """ValueError (naming the family and the first offending parameters) unless every parameter of
    the student's model is in exactly one of its parts."""
    outside, shared = part_coverage(adapter.model, adapter.parts())
    if outside or shared:
        what = (f"{len(outside)} parameters in no part ({', '.join(outside[:3])}, ...)" if outside else
                f"{len(shared)} parameters in two parts ({', '.join(shared[:3])}, ...)")
        raise ValueError(f"the {adapter.name!r} family cannot be a student: its vision/projector/lm parts leave "
                         f"{what}, so student.train_vision/train_projector/train_lm could not be honoured; "
                         "use it as a teacher, or fix its FamilyRule paths (taid_vlm.adapters.vlm_families)")
