"""Exact parameter counts and memory estimates of a ModelConfig, without building the model.

Why analytic: `krllm model info` must answer "how big is large?" instantly, before anyone allocates
gigabytes; tests check every number here against the instantiated model (built on the meta device).

Activation memory (training, no activation checkpointing, SDPA flash kernel so no T x T matrix) is
the bytes autograd saves for backward, per token, with b = bytes of the compute dtype:

    per layer  2 x (4C + 4 + 2bC)              two RMSNorms: fp32 input copy, fp32 rsqrt, x_hat, scaled out
             + b(C + 2 H_kv D) + bC + 4H        q, k, v after RoPE; attention output; fp32 logsumexp
             + 4bI                              SwiGLU: gate, up, silu(gate), silu(gate) * up
    head       4C + 4 + 2bC + 4V + 16           final norm, fp32 log-softmax (V), input ids + targets (int64)

(in fp32 the "fp32 copy" is the input itself). `tests/test_model_sizing.py` checks this formula against
what autograd really saves. On top, the loss needs a transient (B, T, V) logits tensor and its fp32
gradient: b·V + 4V bytes per token, counted separately as "logits + grad (peak)".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: ModelConfig.num_parameters calls into this module
    from krllm.model.config import ModelConfig

DTYPE_BYTES = {"fp32": 4, "float32": 4, "bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2}


@dataclass(frozen=True)
class ParamCounts:
    """Exact parameter counts. `total` counts a tied embedding/lm_head once, like `Llama.num_parameters()`."""

    embedding: int  # V x C
    attention: int  # per layer: q, k, v, o projections
    mlp: int  # per layer: gate, up, down
    norms: int  # per layer: input_layernorm + post_attention_layernorm
    num_layers: int
    final_norm: int  # C
    lm_head: int  # V x C; stored only when untied
    tied: bool

    @property
    def per_layer(self) -> int:
        return self.attention + self.mlp + self.norms

    @property
    def layers(self) -> int:
        return self.per_layer * self.num_layers

    @property
    def total_tied(self) -> int:
        """Count if lm_head shares the embedding."""
        return self.embedding + self.layers + self.final_norm

    @property
    def total_untied(self) -> int:
        """Count if lm_head is its own matrix."""
        return self.total_tied + self.lm_head

    @property
    def total(self) -> int:
        return self.total_tied if self.tied else self.total_untied

    @property
    def non_embedding(self) -> int:
        """Without embedding and lm_head: `Llama.num_parameters(exclude_embeddings=True)`."""
        return self.layers + self.final_norm


def count_parameters(cfg: ModelConfig) -> ParamCounts:
    c, i, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    h, kv, d = cfg.num_attention_heads, cfg.kv_heads, cfg.dim_per_head
    return ParamCounts(
        embedding=v * c,
        attention=c * h * d + 2 * c * kv * d + h * d * c + ((h + 2 * kv) * d if cfg.attention_bias else 0),
        mlp=3 * c * i,
        norms=2 * c,
        num_layers=cfg.num_hidden_layers,
        final_norm=c,
        lm_head=v * c,
        tied=cfg.tie_word_embeddings,
    )


def dtype_bytes(dtype: str) -> int:
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPE_BYTES)}")
    return DTYPE_BYTES[dtype]


def activation_bytes_per_token(cfg: ModelConfig, dtype: str = "fp32") -> tuple[int, int]:
    """(bytes per token per layer, bytes per token for the head) saved for backward — see module doc."""
    b = dtype_bytes(dtype)
    c, i, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    h, kv, d = cfg.num_attention_heads, cfg.kv_heads, cfg.dim_per_head
    norm = 4 * c + 4 + 2 * b * c
    layer = 2 * norm + b * (h * d + 2 * kv * d) + b * h * d + 4 * h + 4 * b * i
    head = norm + 4 * v + 16
    return layer, head


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes. Training = weights + grads + optimizer + activations + logits peak; inference = weights + KV cache + logits."""

    weights: int
    grads: int
    optimizer: int  # AdamW: exp_avg + exp_avg_sq, kept in the parameters' dtype (as torch.optim.AdamW does)
    activations: int
    logits_peak: int
    kv_cache: int
    infer_logits: int

    @property
    def training(self) -> int:
        return self.weights + self.grads + self.optimizer + self.activations + self.logits_peak

    @property
    def inference(self) -> int:
        return self.weights + self.kv_cache + self.infer_logits


def estimate_memory(cfg: ModelConfig, batch_size: int, seq_len: int, dtype: str = "fp32") -> MemoryEstimate:
    """Memory for one training step and for generating with a KV cache at (batch_size, seq_len).

    dtype is the parameter *and* compute dtype (fp32 on CPU; bf16 where the hardware has it).
    """
    if batch_size <= 0 or seq_len <= 0:
        raise ValueError("batch_size and seq_len must be positive")
    b = dtype_bytes(dtype)
    p = count_parameters(cfg).total
    tokens = batch_size * seq_len
    layer, head = activation_bytes_per_token(cfg, dtype)
    kv_cache = 2 * cfg.num_hidden_layers * batch_size * seq_len * cfg.kv_heads * cfg.dim_per_head * b
    return MemoryEstimate(
        weights=p * b,
        grads=p * b,
        optimizer=2 * p * b,
        activations=tokens * (cfg.num_hidden_layers * layer + head),
        logits_peak=tokens * cfg.vocab_size * (b + 4),
        kv_cache=kv_cache,
        infer_logits=tokens * cfg.vocab_size * b,  # prefill of the whole prompt computes (B, T, V)
    )


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


def human_count(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)
