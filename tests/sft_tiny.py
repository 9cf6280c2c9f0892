"""Hermetic fixtures for the fine-tuning tests: a tiny BPE tokenizer trained in the test (special
tokens and ChatML template of docs/architecture.md) and a tiny random LlamaForCausalLM, saved to
temporary directories exactly like a `krllm pretrain` hf/ directory would be.

Not a test module (no `test_` prefix); imported by tests/test_sft_*.py, test_merge*.py, test_classify*.py.
"""

from __future__ import annotations

import json
from pathlib import Path

SPECIALS = ["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"]

# ChatML with the assistant turn (content + <|im_end|>) inside {% generation %} markers.
CHATML = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Same template, but the markers wrap the content only (<|im_end|> outside): krllm must still learn EOS.
CHATML_CONTENT_ONLY = CHATML.replace(
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}",
    "{% generation %}{{ message['content'] }}{% endgeneration %}{{ '<|im_end|>' }}",
)

# Same rendering with no markers at all (like many hub templates): krllm falls back to prefix rendering.
CHATML_NO_MARKERS = CHATML.replace("{% generation %}", "").replace("{% endgeneration %}", "")


def corpus_lines() -> list[str]:
    """Korean text for the tokenizer: the built-in law corpus plus generated NPC dialogues."""
    from krllm.data.sets.builtin import builtin_documents
    from krllm.data.sets.generated import npc_dialogues

    lines = []
    for _, text in builtin_documents("builtin:ko-law"):
        lines.extend(line for line in text.splitlines() if line.strip())
    for r in npc_dialogues(300, seed=123):
        lines += [r["instruction"], r["input"], r["output"]]
    return lines


def make_tokenizer(out_dir: Path, vocab_size: int = 1000, template: str | None = None) -> Path:
    """krllm's own tokenizer trainer (ChatML template with generation markers), small vocab.

    `template` replaces the shipped chat template (to test templates without markers etc.).
    """
    from transformers import AutoTokenizer

    from krllm.tokenizer.train import train_tokenizer

    out_dir = Path(out_dir)
    train_tokenizer(out_dir, texts=corpus_lines(), vocab_size=vocab_size, progress=False)
    tok = AutoTokenizer.from_pretrained(out_dir)
    for i, s in enumerate(SPECIALS):
        assert tok.convert_tokens_to_ids(s) == i, (s, i)
    if template is not None:
        tok.chat_template = template
        tok.save_pretrained(out_dir)
    return out_dir


def make_model(out_dir: Path, tokenizer_dir: Path, hidden: int = 64, layers: int = 2, seed: int = 0,
               tie: bool = False, init_std: float = 0.2) -> Path:
    """Tiny random Llama saved as an HF directory (config.json + model.safetensors + tokenizer files).

    `init_std` is larger than the usual 0.02 so that the frozen random output head can express confident
    predictions (with 0.02 the logits of a 64-wide model stay within about +-1, and no adapter could
    bring the loss far below ln(vocab)); a pretrained head has large norms too.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, tie_word_embeddings=tie, initializer_range=init_std,
                      bos_token_id=0, eos_token_id=0, pad_token_id=1)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return Path(out_dir)


def npc_like(n: int, seed: int = 0) -> list[dict]:
    """NPC-style instruction records (used until/unless krllm.data.sets.generated is importable)."""
    import random

    rng = random.Random(seed)
    names = ["대장장이", "상인", "경비병", "마법사", "여관 주인"]
    items = ["검", "방패", "물약", "지도", "활"]
    prices = ["10", "20", "35", "50", "80"]
    rows = []
    for _ in range(n):
        who, item, price = rng.choice(names), rng.choice(items), rng.choice(prices)
        rows.append({"instruction": f"당신은 게임 속 {who}입니다. 모험가의 말에 답하세요.",
                     "input": f"{item} 얼마예요?",
                     "output": f"{item}은 {price} 골드라네. 좋은 물건이지."})
    return rows


def write_jsonl(path: Path, rows: list) -> Path:
    path = Path(path)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


_SHARED: dict = {}


def tiny_base(hidden: int = 64, init_std: float = 0.2) -> tuple[Path, Path]:
    """(tokenizer dir, model dir) built once per test process (tokenizer training takes a few seconds).

    Read-only for tests: copy before modifying.
    """
    if "root" not in _SHARED:
        import atexit
        import shutil
        import tempfile

        root = Path(tempfile.mkdtemp(prefix="krllm-sft-tiny-"))
        atexit.register(shutil.rmtree, root, True)
        _SHARED["root"], _SHARED["tok"] = root, make_tokenizer(root / "tok")
    key = (hidden, init_std)
    if key not in _SHARED:
        tok = _SHARED["tok"]
        _SHARED[key] = (tok, make_model(_SHARED["root"] / f"model-{hidden}-{init_std}", tok, hidden=hidden,
                                        init_std=init_std))
    return _SHARED[key]


def one_thread():
    """Context manager: torch on one thread. Under CPU contention (2 cores shared by several test runs)
    two OpenMP threads on tiny matrices run many times slower than one."""
    import contextlib

    import torch

    @contextlib.contextmanager
    def _cm():
        n = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(n)

    return _cm()


def torchrun_krllm(command: str, cfg, tmp_path: Path, processes: int = 2):
    """`torchrun --nproc_per_node N -m krllm COMMAND -c <cfg as YAML>` on CPU (gloo), one thread each ->
    the CompletedProcess, asserted successful (the last 3000 characters of stderr otherwise)."""
    import os
    import subprocess
    import sys

    import yaml

    path = tmp_path / f"{command}_ddp.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), allow_unicode=True), encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                          str(processes), "-m", "krllm", command, "-c", str(path)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out
