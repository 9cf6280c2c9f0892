"""Tiny, hermetic model directories for tests and benchmarks of the inference stack.

A byte-level BPE tokenizer trained in a second on a few sentences (special tokens with the fixed
ids of docs/architecture.md and the ChatML template), and a random tiny Llama saved with
`save_hf`, so `AutoModelForCausalLM` / `AutoTokenizer` load the same directory. No network.

    d = tiny_model_dir(tmp_path / "tiny")          # config.json, model.safetensors, tokenizer.json, ...
"""

from __future__ import annotations

import json
from pathlib import Path

SPECIAL_TOKENS = ("<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>")  # ids 0, 1, 2, 3

SAMPLE_TEXT = [
    "안녕하세요! 오늘 날씨가 정말 좋네요. 산책하러 갈까요?",
    "대한민국은 민주공화국이다. 대한민국의 주권은 국민에게 있고, 모든 권력은 국민으로부터 나온다.",
    "모험가여, 이 마을에 온 것을 환영하네. 무기를 사고 싶다면 대장간으로 가게.",
    "사과 3개와 배 5개가 있습니다. 모두 몇 개일까요? 답: 8",
    "The quick brown fox jumps over the lazy dog. Hello, world!",
    "질문에 답해 주세요. 한국어로 대답합니다. 감사합니다.",
]


def tiny_tokenizer_dir(out_dir: str | Path, vocab_size: int = 400) -> Path:
    """Train a byte-level BPE on SAMPLE_TEXT and save it as an HF tokenizer directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from krllm.tokenizer.chat_template import CHATML_TEMPLATE

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(SAMPLE_TEXT * 4, trainer)
    for i, t in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(t) == i, (t, tok.token_to_id(t))
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=SPECIAL_TOKENS[0], eos_token=SPECIAL_TOKENS[0],
                                 pad_token=SPECIAL_TOKENS[1], additional_special_tokens=list(SPECIAL_TOKENS[2:]),
                                 chat_template=CHATML_TEMPLATE, clean_up_tokenization_spaces=False)
    out = Path(out_dir)
    hf.save_pretrained(str(out))
    cfg_path = out / "tokenizer_config.json"
    data = json.loads(cfg_path.read_text(encoding="utf-8"))
    data["chat_template"] = CHATML_TEMPLATE
    cfg_path.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
    return out


def tiny_model_config(vocab_size: int, **overrides):
    """A 2-layer GQA Llama of a few hundred thousand parameters. initializer_range is large so
    random logits are peaked (greedy choices are not near-ties that float noise could flip)."""
    from krllm.model.config import ModelConfig

    cfg = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
               rope_theta=10000.0, tie_word_embeddings=True, initializer_range=0.25,
               bos_token_id=0, eos_token_id=0, pad_token_id=1)
    cfg.update(overrides)
    return ModelConfig(**cfg)


def tiny_model_dir(out_dir: str | Path, seed: int = 0, tokenizer_dir: str | Path | None = None,
                   **overrides) -> Path:
    """Random tiny Llama + tiny tokenizer written as one HF directory (generation eos: 0 and 3)."""
    import torch

    from krllm.model.hf import save_hf
    from krllm.model.llama import Llama

    out = Path(out_dir)
    tok_dir = Path(tokenizer_dir) if tokenizer_dir else tiny_tokenizer_dir(out.parent / f".{out.name}-tok")
    from tokenizers import Tokenizer

    n_vocab = Tokenizer.from_file(str(tok_dir / "tokenizer.json")).get_vocab_size(with_added_tokens=True)
    cfg = tiny_model_config(vocab_size=overrides.pop("vocab_size", n_vocab), **overrides)
    torch.manual_seed(seed)
    model = Llama(cfg)
    save_hf(model, out, tokenizer_dir=tok_dir)
    return out


def tiny_mistral_dir(out_dir: str | Path, seed: int = 0, **config_overrides) -> Path:
    """A tiny random Mistral (a family krllm runs through transformers) + the tiny tokenizer, saved as
    transformers saves it: for tests of the transformers path of the loader, merge and engine."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, MistralConfig

    out_dir = Path(out_dir)
    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir(out_dir.parent / f"{out_dir.name}_tok")))
    shape = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                 bos_token_id=0, eos_token_id=0, pad_token_id=1)
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(MistralConfig(**{**shape, **config_overrides})).save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


def random_qwen2(vocab_size: int, layers: int = 2, rope_theta: float = 1e6, tie: bool = False, seed: int = 0):
    """A tiny transformers Qwen2ForCausalLM whose biases are nonzero (transformers initialises them to
    zero, which would hide a reader that drops them), norms away from 1 and peaked logits."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      rope_theta=rope_theta, rms_norm_eps=1e-6, tie_word_embeddings=tie, pad_token_id=1,
                      bos_token_id=0, eos_token_id=0)
    hf = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0, 0.5)
            elif "norm" in name:
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0, 0.1)
    return hf
