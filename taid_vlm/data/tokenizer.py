"""A small byte-level BPE tokenizer trained locally, for tests, the demo and from-scratch students.

No hub access is needed: the tokenizer is trained on the texts given and carries a ChatML chat
template with ``{% generation %}`` markers, so assistant-only labels work out of the box.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

IMAGE_TOKEN = "<image>"
PAD_TOKEN = "<|pad|>"
BOS_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [PAD_TOKEN, BOS_TOKEN, IM_START, IM_END, IMAGE_TOKEN]
QWEN2_PRETOKENIZE_REGEX = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                           r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")

# ChatML, as Qwen2 uses it. Image blocks become the "<image>" placeholder that the composed
# processor expands to the model's number of image tokens. The generation markers let
# ``apply_chat_template(..., return_assistant_tokens_mask=True)`` find assistant tokens.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for block in message['content'] %}"
    "{% if block['type'] == 'text' %}{{ block['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for block in message['content'] %}"
    "{% if block['type'] == 'image' %}{{ '<image>' }}"
    "{% elif block['type'] == 'text' %}{{ block['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


PRE_TOKENIZERS = ("byte_level", "split_digits_punct")


def use_qwen2_pretokenization(tok: Tokenizer) -> None:
    """Qwen2's normaliser and pre-tokeniser on ``tok`` (in place): transformers 5 loads any directory
    whose config says qwen2 with its own Qwen2Tokenizer, which rebuilds these two from fixed
    settings; with the same ones a saved model tokenizes identically whichever class loads it."""
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])


def train_bpe_tokenizer(
    texts: Iterable[str], vocab_size: int = 1024, min_frequency: int = 1, pre_tokenizer: str = "byte_level"
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` and wrap it for ``transformers``.

    Deterministic for the same texts and settings. The result has pad/eos/bos tokens, the
    ``<image>`` placeholder as a special token, and the ChatML template above; it saves and loads
    with ``save_pretrained`` / ``AutoTokenizer.from_pretrained`` like any HF tokenizer.
    ``pre_tokenizer="split_digits_punct"`` also splits digits one by one and isolates punctuation
    (as Llama-style tokenizers do), so a second tokenizer segments the same text differently
    (cross-tokenizer distillation tests and studies).
    """
    if pre_tokenizer not in PRE_TOKENIZERS:
        raise ValueError(f"pre_tokenizer must be one of {PRE_TOKENIZERS}, got {pre_tokenizer!r}")
    tok = Tokenizer(models.BPE())
    if pre_tokenizer == "split_digits_punct":
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.Punctuation(),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ])
    else:
        use_qwen2_pretokenization(tok)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        # unk as Qwen2Tokenizer's default (BPE over bytes never emits it), so the class transformers 5
        # picks for a qwen2 checkpoint reports the same special tokens as this one.
        unk_token=BOS_TOKEN,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        extra_special_tokens=[IM_START, IMAGE_TOKEN],
        model_max_length=4096,
        padding_side="right",
    )
    hf.chat_template = CHATML_TEMPLATE
    return hf
