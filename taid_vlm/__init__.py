"""taid-vlm: knowledge distillation of VLMs and LLMs with TAID (ICLR 2025)."""

__version__ = "0.1.0"

# Register the composed student with AutoConfig / AutoModelForImageTextToText / AutoProcessor, so
# that `import taid_vlm` is all a user needs before `AutoModelForImageTextToText.from_pretrained(dir)`.
# This imports transformers and torch (a few seconds); any use of the package needs them anyway.
from taid_vlm.models import register_auto as _register_auto  # noqa: E402

_register_auto()
