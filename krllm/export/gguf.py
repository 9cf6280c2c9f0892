"""Write a Llama / Qwen2 model (an HF directory, a PEFT adapter merged first, or a run directory) as one GGUF
file for llama.cpp and Ollama, in Python with the `gguf` package (no llama.cpp binary needed).

    krllm export gguf runs/demo_ko/sft --out demo.gguf --type q8_0
    from krllm.export.gguf import export_gguf; export_gguf("runs/demo_ko/sft", "demo.gguf", "f16")

Why our own writer: the file must make llama.cpp compute what krllm computes, and the usual complaint
("the GGUF answers worse than the fine-tuned model") comes from a tokenizer or template mismatch. So:
  - the model is opened by krllm's loader (`krllm.model.load.load`: run dirs, adapters merged in fp32);
  - tensors get llama.cpp's names (gguf.TensorNameMap) and, for the `llama` architecture, q/k rows are
    permuted back to the interleaved RoPE layout llama.cpp's LLAMA rope expects (HF and krllm use the
    rotate-half layout; Qwen2 is NEOX rope in llama.cpp, so its weights stay as they are);
  - the tokenizer's pre-tokenizer name is inferred so that llama.cpp splits exactly as tokenizer.json
    (krllm.export.gguf_vocab), BOS is added only if the HF tokenizer adds one (krllm's never do: off, where
    llama.cpp's default is on), and the chat template is embedded;
  - f32 logits equal transformers' within 1e-3, tested with llama.cpp itself (tests/test_export_gguf.py).

Types: f32 (exact), f16, bf16, q8_0, q4_0 (llama.cpp's block formats, 32 weights a block). Norms and
biases always stay f32, and a matrix whose rows are not a multiple of 32 falls back to f16, as
convert_hf_to_gguf.py does. Everything is validated before the (slow) load; the file is written
under a temporary name and renamed into place.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from krllm.errors import KrllmError, UsageError

OUT_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0")
ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}  # model_type -> causal-LM class


@dataclass
class ExportPlan:
    """What an export reads, all checked before any weight is loaded."""

    model_dir: Path  # an HF directory or an adapter directory
    adapter: Path | None
    config_dir: Path  # the directory whose config.json describes the weights (the base of an adapter)
    tokenizer_dir: Path
    model_type: str
    config: dict = field(repr=False, default_factory=dict)


def require_gguf():
    """The gguf package, or an error that says how to install it (it is an optional extra)."""
    try:
        import gguf
    except ImportError:
        raise KrllmError("GGUF export needs the `gguf` package: pip install -e '.[export]' (or pip install gguf)") from None
    return gguf


def _check_out_type(out_type: str) -> str:
    if out_type not in OUT_TYPES:
        raise UsageError(f"--type {out_type!r} is not a GGUF type krllm writes; use one of {', '.join(OUT_TYPES)}")
    return out_type


def plan_export(source: str | Path, base: str | Path | None = None) -> ExportPlan:
    """Resolve `source` as krllm's loader would and check it is a causal Llama / Qwen2 with a tokenizer."""
    from krllm.model.adapters import is_adapter_dir, read_adapter_config
    from krllm.model.load import TOKENIZER_MARKERS, resolve_base, resolve_model_dir, tokenizer_dir
    from krllm.runs import read_json_object

    model_dir = resolve_model_dir(source)
    adapter = model_dir if is_adapter_dir(model_dir) else None
    if adapter is not None:
        task = read_adapter_config(adapter).get("task_type")
        if task not in (None, "CAUSAL_LM"):
            raise KrllmError(f"{adapter}/adapter_config.json: task_type {task!r} is not a causal language model; "
                             "only CAUSAL_LM adapters export to GGUF")
    config_dir = resolve_base(adapter, base) if adapter is not None else model_dir
    config_path = config_dir / "config.json"
    if not config_path.is_file():
        raise KrllmError(f"{config_dir} is not a model directory: config.json not found")
    config = read_json_object(config_path)
    model_type = config.get("model_type")
    if model_type not in ARCHITECTURES:
        raise KrllmError(f"{config_path}: model_type {model_type!r} cannot be exported to GGUF by krllm "
                         f"(supported: {', '.join(ARCHITECTURES)})")
    archs = config.get("architectures") or [ARCHITECTURES[model_type]]
    if archs != [ARCHITECTURES[model_type]]:
        raise KrllmError(f"{config_path}: architectures {archs} is not a causal language model; GGUF export writes "
                         f"{ARCHITECTURES[model_type]} (a classifier or other head has no llama.cpp equivalent)")
    tok_dir = tokenizer_dir(adapter, config_dir)
    if not any((tok_dir / f).is_file() for f in TOKENIZER_MARKERS):
        raise KrllmError(f"{tok_dir}: no tokenizer files (tokenizer.json); a GGUF carries its tokenizer, so the "
                         "model directory must hold one")
    return ExportPlan(model_dir=model_dir, adapter=adapter, config_dir=config_dir, tokenizer_dir=tok_dir,
                      model_type=model_type, config=config)


def permute_for_llama_rope(w, n_head: int):
    """HF's rotate-half q/k rows -> the interleaved pairs llama.cpp's LLAMA rope rotates (convert_hf_to_gguf's
    `LlamaModel.permute`): within each head, row i of the first half and row i of the second half become
    rows 2i and 2i+1."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_rope_factors(cfg) -> list[float]:
    """`rope_freqs.weight` of a Llama 3.1-style `rope_scaling: llama3` model (llama.cpp divides each
    frequency by its factor), computed as convert_hf_to_gguf.py does."""
    s = cfg.rope_scaling
    dim, base = cfg.dim_per_head, cfg.rope_theta
    old = s.original_max_position_embeddings or cfg.max_position_embeddings
    low, high = old / s.low_freq_factor, old / s.high_freq_factor
    factors = []
    for i in range(0, dim, 2):
        wavelen = 2 * math.pi * base ** (i / dim)
        if wavelen < high:
            factors.append(1.0)
        elif wavelen > low:
            factors.append(float(s.factor))
        else:
            smooth = (old / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
            factors.append(1.0 / ((1 - smooth) / s.factor + smooth))
    return factors


def _encode_tensor(array, out_type: str):
    """(data, raw ggml type or None) for one tensor: 1-D stays f32; 2-D in `out_type` (f16 where a row
    does not split into 32-weight blocks)."""
    import numpy as np
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import quantize

    array = np.ascontiguousarray(array, dtype=np.float32)
    if array.ndim == 1 or out_type == "f32":
        return array, None
    qtype = {"f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0, "q4_0": Q.Q4_0}[out_type]
    if qtype in (Q.Q8_0, Q.Q4_0) and array.shape[-1] % 32:
        qtype = Q.F16
    data = quantize(array, qtype)
    return data, (None if qtype == Q.F16 else qtype)


def _tensors(model, model_type: str):
    """(gguf name, float32 numpy array) for every weight, in llama.cpp's names and layout."""
    import gguf

    cfg = model.config
    arch = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2}[model_type]
    names = gguf.get_tensor_name_map(arch, cfg.num_hidden_layers)
    tied = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    for hf_name, t in model.state_dict().items():
        if hf_name == "lm_head.weight" and tied:
            continue  # llama.cpp uses token_embd for the output when output.weight is absent
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise KrllmError(f"weight {hf_name!r} has no llama.cpp tensor name for {model_type}")
        w = t.detach().float().cpu().numpy()
        if model_type == "llama" and hf_name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = cfg.num_attention_heads if hf_name.endswith("q_proj.weight") else cfg.kv_heads
            w = permute_for_llama_rope(w, heads)
        yield name, w
    if cfg.rope_scaling is not None and cfg.rope_scaling.rope_type == "llama3":
        import numpy as np

        yield "rope_freqs.weight", np.asarray(llama3_rope_factors(cfg), dtype=np.float32)


def _sampling_defaults(config_dirs: list[Path]) -> dict:
    """temperature / top_p / top_k / repetition_penalty of the first generation_config.json that sets them."""
    import json

    for d in config_dirs:
        path = d / "generation_config.json"
        if path.is_file():
            try:
                gen = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise KrllmError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
            found = {k: gen[k] for k in ("temperature", "top_p", "top_k", "repetition_penalty")
                     if isinstance(gen.get(k), (int, float))}
            if found:
                return found
    return {}


def _write_metadata(w, lm, vocab, out_type: str, sampling: dict) -> None:
    import gguf

    cfg = lm.model.config
    w.add_name(lm.name)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.kv_heads)
    w.add_rope_dimension_count(cfg.dim_per_head)
    if cfg.dim_per_head * cfg.num_attention_heads != cfg.hidden_size:
        w.add_key_length(cfg.dim_per_head)
        w.add_value_length(cfg.dim_per_head)
    w.add_rope_freq_base(float(cfg.rope_theta))
    if cfg.rope_scaling is not None and cfg.rope_scaling.rope_type == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(cfg.rope_scaling.factor))
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                     "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
                     "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[out_type])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(vocab.pre)
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.token_types)
    w.add_token_merges(vocab.merges)
    for add, value in ((w.add_eos_token_id, vocab.eos_id), (w.add_bos_token_id, vocab.bos_id),
                       (w.add_pad_token_id, vocab.pad_id), (w.add_eot_token_id, vocab.eot_id)):
        if value is not None:
            add(value)
    # written always: llama.cpp's BPE vocabularies add BOS when the key is absent, and krllm models never saw one
    w.add_add_bos_token(vocab.add_bos)
    w.add_add_eos_token(vocab.add_eos)
    if vocab.chat_template:
        w.add_chat_template(vocab.chat_template)
    for key, add in (("temperature", w.add_sampling_temp), ("top_p", w.add_sampling_top_p),
                     ("top_k", w.add_sampling_top_k), ("repetition_penalty", w.add_sampling_penalty_repeat)):
        if key in sampling:
            add(int(sampling[key]) if key == "top_k" else float(sampling[key]))


def export_gguf(source: str | Path, out_path: str | Path, out_type: str = "f16", base: str | Path | None = None,
                name: str | None = None) -> Path:
    """Write `source` (HF dir, adapter dir or run dir) as a GGUF file at `out_path`; returns the path.

    out_type: f32 | f16 | bf16 | q8_0 | q4_0. base: an adapter's base model (default: the recorded one).
    """
    gguf = require_gguf()
    from krllm.export.gguf_vocab import gguf_vocab
    from krllm.model.load import load, load_tokenizer

    _check_out_type(out_type)
    out_path = Path(out_path)
    if out_path.is_dir():
        raise UsageError(f"--out {out_path} is a directory; give the .gguf file to write")
    plan = plan_export(source, base)
    tokenizer = load_tokenizer(plan.tokenizer_dir)
    vocab = gguf_vocab(tokenizer, plan.tokenizer_dir, int(plan.config.get("vocab_size") or len(tokenizer)))
    lm = load(plan.model_dir, base=plan.config_dir if plan.adapter else None, device="cpu", dtype="fp32", name=name)
    if len(vocab.tokens) != lm.model.config.vocab_size:
        raise KrllmError(f"{plan.config_dir}/config.json: vocab_size does not match the loaded embedding")
    sampling = _sampling_defaults([d for d in (plan.adapter, plan.config_dir) if d is not None])

    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp-{os.getpid()}")
    writer = gguf.GGUFWriter(str(tmp), plan.model_type)
    try:
        _write_metadata(writer, lm, vocab, out_type, sampling)
        for tname, array in _tensors(lm.model, plan.model_type):
            data, raw = _encode_tensor(array, out_type)
            writer.add_tensor(tname, data, raw_dtype=raw)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out_path)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return out_path
