"""taid-vlm: knowledge distillation of VLMs and LLMs with TAID (ICLR 2025)."""

__version__ = "0.1.0"

# Register the composed student with AutoConfig / AutoModelForImageTextToText / AutoProcessor, so
# that `import taid_vlm` is all a user needs before `AutoModelForImageTextToText.from_pretrained(dir)`.
# Deferred until transformers' Auto model classes are imported: the registration imports torch and
# transformers' model code (seconds), which `taid-vlm --help`, a config error or `plan` never need.
from taid_vlm._autoregister import install as _install  # noqa: E402

_install()
