"""Hermetic inputs for the GGUF / Ollama export tests: tokenizers trained here on the built-in Korean
texts (llama3 split + char merges, qwen2 split + byte merges, and the llama.cpp-less `korean` split) and
tiny random Llama / Qwen2 models saved as HF directories with them.

Not a test module (no `test_` prefix); imported by tests/test_export_gguf.py and test_export_ollama.py.
"""

from __future__ import annotations

from pathlib import Path

import torch

SOURCES = ["builtin:ko-law", {"path": "builtin:npc", "n": 200}, {"path": "builtin:math:mixed", "n": 200}]

# Korean / English / digits / emoji / whitespace runs: where pre-tokenizers differ
MIXED = [
    "안녕하세요, 세계! Hello, world.",
    "대한민국은 민주공화국이다.\n대한민국의 주권은 국민에게 있고, 모든 권력은 국민으로부터 나온다.",
    "가격은 1234567890원이고 2024년 3월 15일에 3.14159를 곱했어요",
    "   앞에 공백 세 개, 뒤에 탭\t\t그리고 줄바꿈\n\n\n끝   ",
    "이모지 😀🎉👍🏽 와 한글이 섞인 문장 ❤️ ok",
    "GPT-4와 Llama-3.1-8B 모델을 비교했다: 12.5% 향상, x=42, y=-7",
    "I'll say it's 'RE-done' — we've 'LL see 'S cases",
    "줄 끝 공백  \r\n윈도우 줄바꿈\r\n\t들여쓰기 된 줄\n    네 칸 들여쓰기",
    "한자 大韓民國 와 カタカナ 그리고 ｆｕｌｌ ｗｉｄｔｈ",
    "<|im_start|>user\n질문이 있어요<|im_end|>\n<|im_start|>assistant\n",
    "숫자만 000 0001 99999999999999 1,000,000",
    "ㅋㅋㅋㅋ ㅎㅎ ㅠㅠ 자모만",
    "",
    " ",
    "\n",
]


def korean_texts() -> dict[str, list[str]]:
    """The built-in Korean texts by set: law (konlpy documents), NPC dialogues, math problems."""
    from krllm.data.sets.builtin import builtin_documents
    from krllm.data.sets.generated import generated_documents

    return {
        "law": [text for _, text in builtin_documents("builtin:ko-law")],
        "npc": [text for _, text in generated_documents("builtin:npc", n=200, seed=7)],
        "math": [text for _, text in generated_documents("builtin:math:mixed", n=200, seed=7)],
    }


def make_tokenizer(out: Path, pre_tokenizer: str = "llama3", merge_unit: str = "char", vocab_size: int = 1500) -> Path:
    from krllm.tokenizer.train import train_tokenizer

    train_tokenizer(out, vocab_size=vocab_size, pre_tokenizer=pre_tokenizer, merge_unit=merge_unit,
                    progress=False, sources=SOURCES)
    return out


def _peaked_(model, seed: int) -> None:
    """Larger-than-init weights and random biases/norms, so logits are peaked (a trained model's are)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            elif "norm" in name:
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def make_model(out: Path, tokenizer_dir: Path, family: str = "llama", tie: bool = False, extra_vocab: int = 7,
               seed: int = 0, **overrides) -> Path:
    """A tiny random transformers Llama (GQA, head_dim 16) or Qwen2 (q/k/v biases) + its tokenizer files.

    extra_vocab: embedding rows past the tokenizer (padded as unused tokens in the GGUF)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    kw = dict(vocab_size=len(tok) + extra_vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6,
              tie_word_embeddings=tie, bos_token_id=0, eos_token_id=0, pad_token_id=1)
    kw.update(overrides)
    torch.manual_seed(seed)
    if family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(rope_theta=1e6, **kw))
    else:
        model = LlamaForCausalLM(LlamaConfig(rope_theta=10000.0, **kw))
    _peaked_(model.eval(), seed)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
