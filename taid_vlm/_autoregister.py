"""Register the composed model with transformers' Auto classes when those classes are first imported.

``import taid_vlm`` used to register at once, which imports torch and transformers' model code
(6-9 s on 2 cores) before every command, ``taid-vlm --help`` included. The registration is only
needed by ``AutoModelForImageTextToText`` / ``AutoProcessor``, so it now runs right after
``transformers.models.auto.modeling_auto`` or ``processing_auto`` is imported (or at once when one
already is). Python has no post-import hook, hence this small meta-path finder that wraps the
loader of those two modules; every other import goes through untouched.
"""

from __future__ import annotations

import importlib.abc
import sys
import warnings
from typing import Any

TRIGGERS = ("transformers.models.auto.modeling_auto", "transformers.models.auto.processing_auto")
_state = {"busy": False, "done": False}


def register_now() -> None:
    """Register (once); a failure is a warning, so that it never breaks the user's own import."""
    if _state["done"] or _state["busy"]:  # busy: register_auto itself imports processing_auto
        return
    models = sys.modules.get("taid_vlm.models")
    if models is not None and getattr(getattr(models, "__spec__", None), "_initializing", False):
        return  # taid_vlm.models is being imported (its imports load the Auto classes); it registers at its end
    _state["busy"] = True
    try:
        from taid_vlm.models import register_auto

        register_auto()
        _state["done"] = True
    except Exception as err:  # noqa: BLE001 - e.g. a broken torchvision; the user's import must go on
        warnings.warn(f"taid_vlm: could not register the composed model with the Auto classes: {err}",
                      stacklevel=2)
    finally:
        _state["busy"] = False
    if _state["done"]:
        sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _Finder)]


class _Loader(importlib.abc.Loader):
    """The real loader of a trigger module, then ``register_now``."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def create_module(self, spec: Any) -> Any:
        return self.inner.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self.inner.exec_module(module)
        register_now()

    def __getattr__(self, name: str) -> Any:  # get_data, get_source, ... of the real loader
        return getattr(self.inner, name)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname not in TRIGGERS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader)
                return spec
        return None


def install() -> None:
    """Register now if transformers' Auto model classes are loaded, else when they are."""
    if any(name in sys.modules for name in TRIGGERS):
        register_now()
    elif not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
