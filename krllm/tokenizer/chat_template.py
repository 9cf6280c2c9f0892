"""The ChatML chat template every krllm tokenizer ships (docs/architecture.md "Tokenizer directory").

    <|im_start|>system\n{content}<|im_end|>\n      (optional, any number of turns)
    <|im_start|>user\n{content}<|im_end|>\n
    <|im_start|>assistant\n{content}<|im_end|>\n

The assistant content *and its closing <|im_end|>* sit inside `{% generation %}` markers, so
`apply_chat_template(..., return_assistant_tokens_mask=True)` (and TRL's `assistant_only_loss`)
train the model on exactly what it must produce, including the token that ends its turn.
The newline after <|im_end|> and the role headers are not trained on. `add_generation_prompt`
appends `<|im_start|>assistant\n`. Content must be a string (no multimodal parts).
"""

from __future__ import annotations

CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['content'] is not string %}"
    "{{- raise_exception('message content must be a string (turn ' ~ loop.index ~ ')') }}"
    "{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{%- generation %}{{- message['content'] + '<|im_end|>' }}{%- endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def render_chatml(messages: list[dict], add_generation_prompt: bool = False) -> str:
    """Pure-Python twin of CHATML_TEMPLATE (no jinja); tests check the two agree."""
    out = []
    for m in messages:
        out.append(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n")
    if add_generation_prompt:
        out.append("<|im_start|>assistant\n")
    return "".join(out)
