"""taid-vlm: knowledge distillation of VLMs and LLMs with TAID (ICLR 2025)."""

__version__ = "0.1.0"
