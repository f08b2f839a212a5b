"""Family-style chat templates for the tiny Hugging Face VLMs (written here, modelled on each format).

Every template ends an assistant turn with ``eos_token`` (the shared tokenizer's ``<|im_end|>``):
teacher and student label the end-of-turn token too, and the k-th response token of one side must
equal the k-th of the other, so both sides must close a response with the same id. Answers start
right after a newline or a colon, never after a space, so the answer text tokenizes exactly as in
the student's ChatML rendering. None of them carries ``{% generation %}`` markers: the assistant
spans come from prefix rendering (``taid_vlm.data.template``).
"""

from __future__ import annotations


def _content(image: str) -> str:
    """Jinja for one message's content (a string or TRL blocks); image blocks become ``image``."""
    return (
        "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for b in m['content'] %}"
        f"{{% if b['type'] == 'image' %}}{image}{{% elif b['type'] == 'text' %}}{{{{ b['text'] }}}}{{% endif %}}"
        "{% endfor %}{% endif %}"
    )


def _chatml(image: str) -> str:
    return (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' }}" + _content(image)
        + "{{ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )


# LLaVA-1.5 (Vicuna style): "USER: <image>\n... ASSISTANT:" — the answer on its own line.
LLAVA = (
    "{% for m in messages %}{% if m['role'] == 'system' %}" + _content("") + "{{ '\n' }}"
    "{% elif m['role'] == 'user' %}{{ 'USER: ' }}" + _content("<image>\n") + "{{ '\n' }}"
    "{% else %}{{ 'ASSISTANT:\n' }}" + _content("") + "{{ eos_token + '\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:\n' }}{% endif %}"
)
# LLaVA-1.6 (Mistral style): "[INST] <image>\n... [/INST]\n" — the answer on its own line.
LLAVA_NEXT = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}" + _content("") + "{{ eos_token + '\n' }}"
    "{% else %}{{ '[INST] ' }}" + _content("<image>\n") + "{{ ' [/INST]\n' }}{% endif %}{% endfor %}"
)
# LLaVA-OneVision (Qwen2 ChatML, "<image>\n" before the text).
LLAVA_ONEVISION = _chatml("<image>\n")
QWEN2_VL = _chatml("<|vision_start|><|image_pad|><|vision_end|>")
INTERNVL = _chatml("<IMG_CONTEXT>\n")
# Idefics3 / SmolVLM: "<|im_start|>User:<image>...<end_of_utterance>\nAssistant:answer".
IDEFICS3 = (
    "{{ '<|im_start|>' }}{% for m in messages %}{% if m['role'] == 'assistant' %}{{ 'Assistant:' }}"
    + _content("") + "{{ eos_token + '\n' }}{% else %}{{ m['role'] | capitalize + ':' }}" + _content("<image>")
    + "{{ '<end_of_utterance>\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
# PaliGemma is prefix -> suffix: all images first, then "question\nanswer<eos>" per turn. The
# processor adds BOS after the image tokens and a newline at the very end (see the adapter rule).
PALIGEMMA = (
    "{% for m in messages %}{% if m['content'] is not string %}{% for b in m['content'] %}"
    "{% if b['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}{% endif %}{% endfor %}"
    "{% for m in messages %}{% if m['role'] == 'assistant' %}" + _content("") + "{{ eos_token }}"
    "{% else %}" + _content("") + "{{ '\n' }}{% endif %}{% endfor %}"
)
# Gemma 3: "<start_of_turn>user\n...<end_of_turn>\n<start_of_turn>model\n".
GEMMA3 = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'assistant' %}{{ '<start_of_turn>model\n' }}"
    + _content("") + "{{ eos_token + '\n' }}{% else %}{{ '<start_of_turn>user\n' }}" + _content("<start_of_image>")
    + "{{ '<end_of_turn>\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
# Mistral 3 (Pixtral images): "[INST]...[/INST]answer</s>", images as [IMG] (the processor
# expands each into rows of [IMG] ending in [IMG_BREAK] / [IMG_END]).
MISTRAL3 = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}" + _content("") + "{{ eos_token }}"
    "{% else %}{{ '[INST]' }}" + _content("[IMG]") + "{{ '[/INST]\n' }}{% endif %}{% endfor %}"
)
