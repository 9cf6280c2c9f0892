"""SFT's before/after samples run on krllm's engine: on a live PEFT model they equal transformers'
greedy `generate` token for token, stop where it stops, and leave the model's train mode as it was."""

from __future__ import annotations

import torch

from krllm.data.tokens.chat_tokens import stop_ids
from krllm.infer.testing import tiny_mistral_dir
from krllm.train.hf.samples import generate_answers

PROMPTS = [[{"role": "user", "content": "안녕하세요, 대장장이님!"}],
           [{"role": "system", "content": "짧게 답하세요."}, {"role": "user", "content": "검 하나 주세요"}],
           [{"role": "user", "content": "가"}]]


def _reference(model, tokenizer, msgs, max_new_tokens):
    ids = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True,
                                        return_tensors="pt")["input_ids"]
    stops = stop_ids(tokenizer)
    with torch.no_grad():
        new = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=stops, pad_token_id=tokenizer.pad_token_id)[0, ids.shape[1]:]
    new = new.tolist()
    stopped = bool(new) and new[-1] in stops
    return {"answer": tokenizer.decode(new[:-1] if stopped else new, skip_special_tokens=False),
            "stopped": stopped, "tokens": len(new)}


def test_samples_of_a_live_peft_model_equal_transformers_generate(tmp_path):
    import peft
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = tiny_mistral_dir(tmp_path / "base")
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    torch.manual_seed(1)
    model = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                       init_lora_weights=False))
    model.train()
    got = generate_answers(model, tok, PROMPTS, max_new_tokens=12)
    assert model.training  # put back as it was
    model.eval()
    want = [_reference(model, tok, m, 12) for m in PROMPTS]
    assert got == want
    assert all(g["tokens"] > 0 for g in got)
    assert generate_answers(model, tok, [], max_new_tokens=4) == []
