"""accelerate's experiment trackers by name (``logging.report_to``): which exist, which are installed."""

from __future__ import annotations

from taid_vlm.config import ConfigError

# accelerate tracker name -> the pip package that provides it (for the error message).
TRACKER_PACKAGES = {
    "tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio", "mlflow": "mlflow",
    "comet_ml": "comet-ml", "aim": "aim", "clearml": "clearml", "dvclive": "dvclive", "swanlab": "swanlab",
}


def known_trackers() -> list[str]:
    """Tracker names accelerate knows (its ``LoggerType``), without the ``all`` wildcard."""
    from accelerate.utils import LoggerType

    return [t.value for t in LoggerType if t.value != "all"]


def installed_trackers() -> list[str]:
    """Tracker names whose package is importable here (accelerate's own detection)."""
    from accelerate.tracking import _available_trackers

    return [str(getattr(t, "value", t)) for t in _available_trackers]


def check_trackers(names: list[str]) -> None:
    """Raise ConfigError naming ``logging.report_to`` for an unknown or not-installed tracker."""
    known, installed = known_trackers(), installed_trackers()
    for name in names:
        if not isinstance(name, str) or name not in known:
            raise ConfigError(f"logging.report_to: unknown tracker {name!r}; accelerate knows {', '.join(known)}")
        if name not in installed:
            pkg = TRACKER_PACKAGES.get(name, name)
            raise ConfigError(f"logging.report_to: tracker {name!r} is not installed here; pip install {pkg} "
                              f"or drop it (installed: {', '.join(installed) or 'none'})")
