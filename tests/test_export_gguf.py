"""krllm export gguf, checked by llama.cpp itself (llama-cpp-python) against our HF tokenizer and transformers:

- token ids equal on the built-in Korean texts (law, NPC, math) and on mixed Korean/English/digits/emoji text,
  for a llama3-split char-merge tokenizer (`llama-bpe`) and a qwen2-split byte-merge one (`qwen2`);
- f32 logits equal transformers' (max |diff| < 1e-3) for Llama (q/k permuted for llama.cpp's rope) and
  Qwen2 (biases, tied embedding), also for a LoRA adapter merged on export; q8_0 greedy tokens agree;
  f16 / bf16 / q4_0 load and stay close;
- llama.cpp's chat handling with the embedded template builds the same prompt ids as apply_chat_template;
- bad input is refused before anything is written.
"""

import functools
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from export_tiny import MIXED, korean_texts, make_model, make_tokenizer

from krllm.errors import KrllmError, UsageError

gguf = pytest.importorskip("gguf", reason="the gguf package is in krllm's `export` extra (pip install -e '.[export]')")

from krllm.export.gguf import export_gguf, permute_for_llama_rope  # noqa: E402

CHAT = [{"role": "system", "content": "당신은 친절한 도우미입니다."},
        {"role": "user", "content": "대한민국의 수도는 어디인가요?"},
        {"role": "assistant", "content": "서울입니다."},
        {"role": "user", "content": "인구는 약 950만 명이죠? 2024년 기준으로 알려 주세요 🙂"}]
PROMPT = "대한민국은 민주공화국이다. 모든 국민은 법 앞에 평등하다. Price: 12345원!"


@pytest.fixture(scope="module")
def llama_cpp():
    return pytest.importorskip("llama_cpp", reason="llama-cpp-python is in krllm's `export` extra "
                               "(pip install -e '.[export]'; it builds llama.cpp, ~12 min once)")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Tokenizers + models: llama (llama3 split, char merges, untied) and qwen2 (qwen2 split, byte merges, tied)."""
    root = tmp_path_factory.mktemp("export")
    tok_llama3 = make_tokenizer(root / "tok_llama3", "llama3", "char")
    tok_qwen2 = make_tokenizer(root / "tok_qwen2", "qwen2", "byte")
    return {"root": root,
            "llama": make_model(root / "llama", tok_llama3, "llama", tie=False),
            "qwen2": make_model(root / "qwen2", tok_qwen2, "qwen2", tie=True)}


_FILES: dict = {}


def exported(built, family: str, out_type: str):
    key = (str(built["root"]), family, out_type)
    if key not in _FILES:
        _FILES[key] = export_gguf(built[family], built["root"] / f"{family}-{out_type}.gguf", out_type)
    return _FILES[key]


@functools.lru_cache(maxsize=None)
def _batches_crash(path: str) -> bool:
    """Whether llama.cpp dies evaluating a 32-token batch of this file, tried in a child process: on a
    machine here (an Intel Xeon in a VM) llama-cpp-python built with -march=native dies with SIGILL in
    quantized multi-token batches (q8_0, from 8 tokens), which would take the whole test run down."""
    code = ("import sys, llama_cpp; llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=64, n_batch=64, "
            "n_threads=2, verbose=False); llm.eval(list(range(1, 33)))")
    done = subprocess.run([sys.executable, "-c", code, path], capture_output=True, timeout=300, check=False)
    return done.returncode < 0


def open_llama(llama_cpp, path, **kw):
    """llama.cpp with an f32 KV cache (its default f16 cache alone moves logits by ~1e-2); a file whose
    batches crash this machine's build (_batches_crash) is fed one token a batch."""
    batch = 1 if not str(path).endswith(("f32.gguf", "f16.gguf")) and _batches_crash(str(path)) else 256
    return llama_cpp.Llama(model_path=str(path), n_ctx=256, n_batch=batch, n_ubatch=batch, n_threads=2,
                           verbose=False, type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32, **kw)


def llama_cpp_logits(llama_cpp, path, ids):
    llm = open_llama(llama_cpp, path, logits_all=True)
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float64)


def hf_logits(model_dir, ids):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].double().numpy()


def hf_ids(model_dir, text):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir).encode(text, add_special_tokens=False)


# ---------------------------------------------------------------- file contents (gguf package only)
def test_permute_matches_llama_cpp_interleaved_pairs():
    """Row i of a head's first half and row i of its second half become rows 2i, 2i+1 (the pairs llama.cpp's
    LLAMA rope rotates together, as HF's rotate_half pairs dim i with i + D/2)."""
    heads, d = 2, 4
    w = np.arange(heads * d)[:, None].repeat(3, axis=1)
    got = permute_for_llama_rope(w, heads)[:, 0].tolist()
    assert got == [0, 2, 1, 3, 4, 6, 5, 7]


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_gguf_metadata_and_tensors(built, family):
    from transformers import AutoTokenizer

    path = exported(built, family, "f32")
    reader = gguf.GGUFReader(str(path))
    f = {k: v.contents() for k, v in reader.fields.items()}
    tok = AutoTokenizer.from_pretrained(built[family])
    cfg = json.loads((built[family] / "config.json").read_text())
    assert f["general.architecture"] == family
    assert f["tokenizer.ggml.pre"] == {"llama": "llama-bpe", "qwen2": "qwen2"}[family]
    assert f["tokenizer.ggml.model"] == "gpt2" and f["tokenizer.ggml.add_bos_token"] is False
    assert f[f"{family}.context_length"] == cfg["max_position_embeddings"]
    assert f[f"{family}.attention.head_count_kv"] == 2 and f[f"{family}.rope.dimension_count"] == 16
    assert f[f"{family}.rope.freq_base"] == pytest.approx(cfg.get("rope_theta") or cfg["rope_parameters"]["rope_theta"])
    tokens, types = f["tokenizer.ggml.tokens"], f["tokenizer.ggml.token_type"]
    assert len(tokens) == cfg["vocab_size"] == len(tok) + 7
    assert tokens[: len(tok)] == [tok.convert_ids_to_tokens(i) for i in range(len(tok))]
    assert types[:4] == [3, 3, 3, 3] and set(types[4: len(tok)]) == {1} and set(types[len(tok):]) == {5}
    assert f["tokenizer.ggml.eos_token_id"] == tok.eos_token_id and f["tokenizer.ggml.eot_token_id"] == 3
    assert "generation %}" not in f["tokenizer.chat_template"] and "<|im_start|>" in f["tokenizer.chat_template"]
    assert len(f["tokenizer.ggml.merges"]) == len(json.loads((built[family] / "tokenizer.json").read_text())["model"]["merges"])
    names = {t.name for t in reader.tensors}
    assert ("output.weight" in names) == (family == "llama")  # qwen2 model is tied: llama.cpp reuses token_embd
    assert {"token_embd.weight", "output_norm.weight", "blk.1.ffn_down.weight"} <= names
    assert ("blk.0.attn_q.bias" in names) == (family == "qwen2")


@pytest.mark.parametrize("out_type,qtype", [("q8_0", "Q8_0"), ("q4_0", "Q4_0"), ("bf16", "BF16"), ("f16", "F16")])
def test_types_quantize_matrices_and_keep_norms_f32(built, out_type, qtype):
    reader = gguf.GGUFReader(str(exported(built, "llama", out_type)))
    kinds = {t.name: t.tensor_type.name for t in reader.tensors}
    assert kinds["blk.0.attn_q.weight"] == kinds["token_embd.weight"] == qtype
    assert kinds["blk.0.attn_norm.weight"] == kinds["output_norm.weight"] == "F32"


# ---------------------------------------------------------------- bad input
def test_korean_pre_tokenizer_refused_with_retrain_hint(tmp_path):
    tok = make_tokenizer(tmp_path / "tok", "korean", "byte", vocab_size=400)
    model = make_model(tmp_path / "m", tok)
    with pytest.raises(KrllmError, match=r"`korean` pre-tokenizer.*pre_tokenizer: llama3"):
        export_gguf(model, tmp_path / "out.gguf", "f32")
    assert list(tmp_path.glob("*.gguf")) == [] and not list(tmp_path.glob(".out.gguf*"))


def test_ignore_merges_mismatch_refused(built, tmp_path):
    """A llama3 split without ignore_merges would tokenize differently in llama.cpp's llama-bpe."""
    import shutil

    d = tmp_path / "m"
    shutil.copytree(built["llama"], d)
    data = json.loads((d / "tokenizer.json").read_text())
    data["model"]["ignore_merges"] = False
    (d / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False))
    with pytest.raises(KrllmError, match="ignore_merges"):
        export_gguf(d, tmp_path / "out.gguf")


def test_unknown_pre_tokenizer_refused(built, tmp_path):
    """A split llama.cpp has no name for (here: whitespace) is refused, never exported with a guessed name."""
    import shutil

    d = tmp_path / "m"
    shutil.copytree(built["qwen2"], d)
    data = json.loads((d / "tokenizer.json").read_text())
    data["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\S+|\s+"
    (d / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False))
    with pytest.raises(KrllmError, match="llama.cpp has no pre-tokenizer known to split exactly like this"):
        export_gguf(d, tmp_path / "out.gguf")
    assert not list(tmp_path.glob("*.gguf"))


def test_unknown_type_missing_dir_and_non_causal_config(built, tmp_path):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    with pytest.raises(UsageError, match="q5_k.*f32, f16, bf16, q8_0, q4_0"):
        export_gguf(built["llama"], tmp_path / "x.gguf", "q5_k")
    with pytest.raises(KrllmError, match="does not exist"):
        export_gguf(tmp_path / "nope", tmp_path / "x.gguf")
    cls_dir = tmp_path / "cls"
    LlamaForSequenceClassification(LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64,
                                               num_hidden_layers=1, num_attention_heads=2, num_labels=3)).save_pretrained(cls_dir)
    with pytest.raises(KrllmError, match=r"cls/config.json: architectures \['LlamaForSequenceClassification'\] is not a causal"):
        export_gguf(cls_dir, tmp_path / "x.gguf")
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    with pytest.raises(KrllmError, match="bert/config.json: model_type 'bert' cannot be exported"):
        export_gguf(bert, tmp_path / "x.gguf")
    assert not list(tmp_path.glob("*.gguf"))


def test_cli_reports_bad_type_with_exit_2(built, tmp_path, capsys):
    from krllm.cli import main

    with pytest.raises(SystemExit) as e:
        main(["export", "gguf", str(built["llama"]), "--out", str(tmp_path / "x.gguf"), "--type", "int4"])
    assert e.value.code == 2 and "--type 'int4'" in capsys.readouterr().err


# ---------------------------------------------------------------- llama.cpp itself
def _mismatches(tok, llm, texts):
    bad, n_tokens = [], 0
    for text in texts:
        ours = tok.encode(text, add_special_tokens=False)
        theirs = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        n_tokens += len(ours)
        if ours != theirs:
            bad.append((text[:60], ours[:20], theirs[:20]))
    return bad, n_tokens


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_llama_cpp_tokenizes_exactly_like_hf(built, llama_cpp, family):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(built[family])
    llm = open_llama(llama_cpp, exported(built, family, "f32"), vocab_only=True)
    sets = {**korean_texts(), "mixed": MIXED}
    for name, texts in sets.items():
        bad, n_tokens = _mismatches(tok, llm, texts)
        print(f"{family} {name}: {len(texts) - len(bad)}/{len(texts)} texts, {n_tokens} tokens identical")
        assert not bad, f"{name}: llama.cpp splits differently: {bad[:3]}"
    # the check is not vacuous: special tokens are parsed, and BOS is not added
    assert llm.tokenize(b"<|im_end|>", add_bos=True, special=True) == [3]


@pytest.mark.slow
def test_bos_added_exactly_when_the_hf_tokenizer_adds_it(built, llama_cpp, tmp_path):
    """A tokenizer.json whose post-processor prepends BOS (as Llama 3's does) -> add_bos_token true, and llama.cpp's
    ids with BOS equal HF's encode(add_special_tokens=True); krllm's own tokenizers never add one (above)."""
    import shutil

    from transformers import AutoTokenizer

    d = tmp_path / "bos"
    shutil.copytree(built["llama"], d)
    data = json.loads((d / "tokenizer.json").read_text())
    bos = {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}
    data["post_processor"] = {"type": "TemplateProcessing", "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
                              "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                              "special_tokens": {"<|endoftext|>": {"id": "<|endoftext|>", "ids": [0], "tokens": ["<|endoftext|>"]}}}
    (d / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False))
    tok = AutoTokenizer.from_pretrained(d)
    ref = tok.encode(PROMPT, add_special_tokens=True)
    assert ref[0] == 0
    path = export_gguf(d, tmp_path / "bos.gguf", "f32")
    assert gguf.GGUFReader(str(path)).fields["tokenizer.ggml.add_bos_token"].contents() is True
    llm = open_llama(llama_cpp, path, vocab_only=True)
    assert llm.tokenize(PROMPT.encode(), add_bos=True, special=True) == ref


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_f32_logits_equal_transformers(built, llama_cpp, family):
    ids = hf_ids(built[family], PROMPT)
    ref = hf_logits(built[family], ids)
    got = llama_cpp_logits(llama_cpp, exported(built, family, "f32"), ids)
    diff = np.abs(got - ref).max()
    print(f"{family} f32: {len(ids)} positions, max |logit diff| {diff:.2e} (logit std {ref.std():.2f})")
    assert ref.std() > 1.0  # peaked logits: a wrong permutation or a missing bias shows as O(1) differences
    assert diff < 1e-3


@pytest.mark.slow
def test_chat_template_in_gguf_gives_our_prompt_ids(built, llama_cpp):
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from krllm.model.load import load_tokenizer
    from krllm.data.tokens.chat_tokens import generation_prompt_ids

    tok = load_tokenizer(built["llama"])
    ours = generation_prompt_ids(tok, CHAT)
    llm = open_llama(llama_cpp, exported(built, "llama", "f32"))
    template = llm.metadata["tokenizer.chat_template"]
    formatter = Jinja2ChatFormatter(template=template, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    prompt = formatter(messages=CHAT).prompt
    # as llama-cpp-python's chat handler tokenizes it (add_bos asked for: the GGUF's add_bos_token=false wins)
    assert llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True) == ours
    out = llm.create_chat_completion(messages=CHAT, max_tokens=1, temperature=0.0)  # the GGUF's own template
    assert out["usage"]["prompt_tokens"] == len(ours)
    assert llm.input_ids[: len(ours)].tolist() == ours


@pytest.mark.slow
def test_lora_adapter_is_merged_on_export(built, llama_cpp, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(built["llama"], dtype=torch.float32)
    torch.manual_seed(3)
    pm = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "down_proj"],
                                         init_lora_weights=False, task_type="CAUSAL_LM")).eval()
    run = tmp_path / "run"
    pm.save_pretrained(run / "adapter")
    ids = hf_ids(built["llama"], PROMPT)
    with torch.no_grad():
        ref = pm(input_ids=torch.tensor([ids])).logits[0].double().numpy()
        with pm.disable_adapter():
            plain = pm(input_ids=torch.tensor([ids])).logits[0].double().numpy()
    assert np.abs(ref - plain).max() > 0.1  # the adapter changes the model
    path = export_gguf(run, tmp_path / "lora.gguf", "f32", base=built["llama"])  # a run dir: its adapter/
    diff = np.abs(llama_cpp_logits(llama_cpp, path, ids) - ref).max()
    print(f"llama + LoRA f32: max |logit diff| vs PEFT {diff:.2e}")
    assert diff < 1e-3


@pytest.mark.slow
def test_llama3_rope_scaling_logits(built, llama_cpp, tmp_path):
    """`rope_scaling: llama3` (Llama 3.1+) goes into rope_freqs.weight; logits still equal transformers'."""
    scaled = make_model(tmp_path / "scaled", built["llama"], "llama", max_position_embeddings=256,
                        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 32})
    ids = hf_ids(scaled, PROMPT + " " + PROMPT)
    path = export_gguf(scaled, tmp_path / "scaled.gguf", "f32")
    assert "rope_freqs.weight" in {t.name for t in gguf.GGUFReader(str(path)).tensors}
    ref = hf_logits(scaled, ids)
    assert np.abs(ref - hf_logits(built["llama"], ids)).max() > 1e-2  # the scaling changes this model's logits
    diff = np.abs(llama_cpp_logits(llama_cpp, path, ids) - ref).max()
    assert diff < 1e-3


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The demo's tokenizer config (configs/tokenizer/ko_bpe.yaml) + a krllm Llama trained 200 steps on the
    built-in Korean texts, saved by krllm (save_hf): "pretrained-like" (peaked, text-shaped predictions)."""
    from pathlib import Path

    from krllm.config import load_config
    from krllm.model.config import ModelConfig
    from krllm.model.hf import save_hf
    from krllm.model.llama import Llama
    from krllm.model.load import load_tokenizer
    from krllm.tokenizer.train import TokenizerTrainConfig, train_tokenizer

    root = tmp_path_factory.mktemp("trained")
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "tokenizer" / "ko_bpe.yaml", TokenizerTrainConfig)
    summary = train_tokenizer(root / "tok", cfg, progress=False)
    assert summary["llama_cpp_pre"] == "llama-bpe" and summary["merge_unit"] == "char"
    tok = load_tokenizer(root / "tok")
    docs = [t for texts in korean_texts().values() for t in texts]
    stream = [i for d in docs for i in tok.encode(d, add_special_tokens=False) + [tok.eos_token_id]]
    torch.manual_seed(0)
    model = Llama.build(ModelConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                    tie_word_embeddings=True))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    data = torch.tensor(stream[: (len(stream) // 49) * 49]).view(-1, 49)
    losses = []
    for _ in range(200):  # loss 8.3 -> ~4.5: the greedy text is Korean-shaped, not one repeated token
        batch = data[torch.randint(0, len(data), (8,))]
        _, loss = model(batch[:, :-1], targets=batch[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < losses[0] - 2.5
    save_hf(model.eval(), root / "hf", tokenizer_dir=root / "tok")
    return {"root": root, "hf": root / "hf", "losses": losses}


NPC_PROMPT = "당신은 게임 속 대장장이입니다. 모험가의 말에 답하세요.\n\n검 얼마예요?\n\n"


def krllm_greedy(model_dir, ids, n_new):
    from krllm.infer.generator import Generator
    from krllm.infer.sampling import SamplingParams
    from krllm.model.load import load

    gen = Generator(load(model_dir, device="cpu", dtype="fp32"))
    return list(gen.engine.stream(ids, SamplingParams(temperature=0.0), n_new, ()))


def llama_cpp_greedy(llama_cpp, path, ids, n_new):
    llm = open_llama(llama_cpp, path)
    out = []
    for t in llm.generate(ids, temp=0.0, top_k=1, reset=True):
        out.append(t)
        if len(out) == n_new:
            break
    return out


@pytest.mark.slow
def test_demo_tokenizer_and_trained_model_generate_the_same_in_llama_cpp(trained, llama_cpp):
    """End to end: demo tokenizer + trained krllm model -> GGUF f32 -> llama.cpp's greedy tokens equal krllm's
    engine on a Korean prompt; q8_0 agrees too, and f16 / bf16 / q4_0 load, run and mostly agree."""
    from krllm.model.load import load_tokenizer

    tok = load_tokenizer(trained["hf"])
    ids = tok.encode(NPC_PROMPT, add_special_tokens=False)
    n_new = 24
    ours = krllm_greedy(trained["hf"], ids, n_new)
    f32 = export_gguf(trained["hf"], trained["root"] / "demo-f32.gguf", "f32")
    assert open_llama(llama_cpp, f32, vocab_only=True).tokenize(NPC_PROMPT.encode(), add_bos=True, special=True) == ids
    # a real continuation, not one token repeated (so that equality below means something); how varied it
    # is depends on the CPU's float kernels during the fixture's training: 4 distinct tokens on one machine
    assert len(set(ours)) >= 3
    assert llama_cpp_greedy(llama_cpp, f32, ids, n_new) == ours
    q8 = export_gguf(trained["hf"], trained["root"] / "demo-q8_0.gguf", "q8_0")
    q8_tokens = llama_cpp_greedy(llama_cpp, q8, ids, n_new)
    agree = next((i for i, (a, b) in enumerate(zip(q8_tokens, ours)) if a != b), n_new)
    print(f"demo e2e: loss {trained['losses'][0]:.2f} -> {trained['losses'][-1]:.2f}; greedy {tok.decode(ours)!r}; "
          f"q8_0 greedy agrees for {agree}/{n_new} tokens")
    assert agree >= 12  # rounding may flip a near-tie later on; the first dozen tokens are the same

    from transformers import AutoModelForCausalLM

    seq = ids + ours
    model = AutoModelForCausalLM.from_pretrained(trained["hf"], dtype=torch.float32).eval()
    with torch.no_grad():
        ref = model(torch.tensor([seq])).logits[0].double().numpy()
    for out_type, tol, min_top1 in (("f32", 1e-3, 1.0), ("q8_0", 0.2, 0.95), ("f16", 0.05, 0.95),
                                    ("bf16", 0.5, 0.9), ("q4_0", 1.5, 0.75)):
        path = export_gguf(trained["hf"], trained["root"] / f"demo-{out_type}.gguf", out_type)
        logits = llama_cpp_logits(llama_cpp, path, seq)
        diff = np.abs(logits - ref).max()
        top1 = (logits.argmax(-1) == ref.argmax(-1)).mean()
        print(f"demo {out_type}: {path.stat().st_size / 1024:.0f} KiB, max |logit diff| {diff:.3g}, "
              f"top-1 agreement {top1:.0%} over {len(seq)} positions")
        assert np.isfinite(logits).all() and diff < tol and top1 >= min_top1
