"""`taid-vlm demo`: presets, the staged pipeline (data -> teacher -> students -> scores), its report,
and the study helpers that the eval/ scripts share."""
