"""Loss registry: names -> ``DistillLoss`` classes, with errors that list the valid names."""

from __future__ import annotations

import difflib
import inspect

from taid_vlm.losses._validate import OptionError
from taid_vlm.losses.base import DistillLoss
from taid_vlm.losses.modules import (
    AKLLoss,
    CTKDLoss,
    DKDLoss,
    ForwardKLLoss,
    GJSDLoss,
    ReverseKLLoss,
    SFTLoss,
    SkewFKLLoss,
    SkewRKLLoss,
    TAIDLoss,
    TVDLoss,
)

LOSSES: dict[str, type[DistillLoss]] = {
    cls.name: cls
    for cls in (SFTLoss, ForwardKLLoss, ReverseKLLoss, TVDLoss, GJSDLoss, SkewFKLLoss, SkewRKLLoss, AKLLoss,
                CTKDLoss, DKDLoss, TAIDLoss)
}
LOSS_NAMES: tuple[str, ...] = tuple(LOSSES)  # the built-in losses


def register_loss(cls: type[DistillLoss]) -> type[DistillLoss]:
    """Class decorator: make ``cls`` available as ``get_loss(cls.name)`` and as ``loss.name`` in a
    config. A new loss is one ``DistillLoss`` subclass; nothing outside ``losses/`` changes."""
    if not (isinstance(cls, type) and issubclass(cls, DistillLoss)) or cls.name in ("", "base"):
        raise TypeError(f"register_loss: expected a DistillLoss subclass with its own `name`, got {cls!r}")
    if cls.name in LOSSES and LOSSES[cls.name] is not cls:
        raise ValueError(f"register_loss: a loss named {cls.name!r} is registered already ({LOSSES[cls.name]})")
    LOSSES[cls.name] = cls
    return cls


def loss_options(name: str) -> tuple[str, ...]:
    """The options ``get_loss(name, **options)`` accepts (its class's constructor arguments)."""
    if name not in LOSSES:
        raise OptionError("name", f"unknown loss {name!r}; valid names: {', '.join(LOSSES)}")
    params = inspect.signature(LOSSES[name].__init__).parameters
    return tuple(p for p in params if p != "self")


def option_list(name: str) -> str:
    """``t_start=0.4, ..., t=None (what it does)``: each option with its default, and the class's
    ``option_help`` note where the name alone does not say what the option is."""
    params = inspect.signature(LOSSES[name].__init__).parameters
    notes = getattr(LOSSES[name], "option_help", {})
    return ", ".join(f"{p}={params[p].default!r}" + (f" ({notes[p]})" if p in notes else "")
                     for p in loss_options(name))


def get_loss(name: str, **options) -> DistillLoss:
    """Build the loss registered as ``name`` (sft, fkl, rkl, tvd, gjsd, skew_fkl, skew_rkl, akl, ctkd, dkd, taid).

    ``options`` go to the class (e.g. ``temperature``, ``beta`` for gjsd, the schedule for taid).
    Raises ``OptionError`` (a ValueError whose ``option`` names the culprit, ``"name"`` for an unknown
    loss) listing the valid names or options; an out-of-range option raises it from the class.
    """
    allowed = loss_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        close = difflib.get_close_matches(unknown[0], allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise OptionError(unknown[0], f"loss {name!r} takes no option {unknown[0]!r}{hint}; "
                                      f"its options (default): {option_list(name)}")
    _check_types(LOSSES[name], options)
    return LOSSES[name](**options)


_TYPES = {"bool": (bool,), "float": (int, float), "int": (int,), "str": (str,)}


def _check_types(cls: type[DistillLoss], options: dict) -> None:
    """Refuse an option whose value is not of its annotated type (``adaptive: 2``, ``beta: "x"``);
    ints pass for floats, and ``bool`` is not taken for a number."""
    params = inspect.signature(cls.__init__).parameters
    for key, value in options.items():
        ann = str(params[key].annotation).replace(" ", "")
        kinds = [k for k in ann.split("|") if k != "None"]
        if value is None and "None" in ann.split("|"):
            continue
        allowed = tuple(t for k in kinds for t in _TYPES.get(k, ()))
        if not allowed or len(kinds) != len([k for k in kinds if k in _TYPES]):
            continue  # an annotation we do not check (e.g. a tensor or a class)
        wrong = not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed)
        if wrong:
            raise OptionError(key, f"{key} must be {' or '.join(kinds)}, got {value!r}")
