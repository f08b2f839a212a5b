"""Data: readers, image loading, chat templating with assistant-only labels, synthetic set.

Heavy pieces (``datasets``, PIL, tokenizers) are imported by the submodules that need them:
``images`` (ImageRef), ``readers`` (load_samples, DataReport), ``template``
(encode_conversation, encode_prompt, TokenizerTemplate), ``collate`` (PairCollator,
pad_sequences), ``synthetic`` (generate_synthetic, synthetic_corpus, main_make_synthetic),
``sources`` (open_records: every input as a ``datasets`` table or stream), ``lazy`` (LazySamples,
StreamSamples: records converted when used), ``packing`` (raw text packed into rows,
PackedCollator), ``loading`` (a run's training data from its config).
"""

from taid_vlm.data.report import DataReport
from taid_vlm.data.types import Sample, SkipSample

__all__ = ["DataReport", "Sample", "SkipSample"]
