"""A from-scratch Llama that *is* a Hugging Face `LlamaForCausalLM` checkpoint.

Read top-down: RMSNorm -> rotary embedding -> attention -> SwiGLU MLP -> block -> model
(the KV caches are in krllm.model.cache).

Notable features
- Parameter names equal transformers' (`model.layers.0.self_attn.q_proj.weight`, ...), so
  `krllm.model.hf.save_hf` writes a directory `AutoModelForCausalLM` loads, and any local HF Llama
  loads here. Logits match transformers in fp32 (same RoPE `rotate_half` convention, same RMSNorm:
  normalise in fp32, cast back, then scale).
- Grouped-query attention through `torch.nn.functional.scaled_dot_product_attention` with
  `enable_gqa` (no repeated K/V copies); `is_causal=True` fast path when there is no cache or mask.
  Under CPU bf16/fp16 autocast, causal attention without a cache runs as plain matmuls + softmax
  (`causal_attention_lowp`): PyTorch's CPU flash kernel is ~2x slower there (measured, torch 2.13).
  Training on CPU can plug in a faster kernel for that case and for fp32 (`Attention.causal_kernel`).
- Training loss without logits: `forward(..., targets, return_logits=False)` runs the LM head and
  cross-entropy in row chunks (`krllm.model.fused_loss`), never holding the (B, T, V) logits.
- RoPE scaling of long-context checkpoints, `rope_scaling` 'llama3' (Llama 3.1-3.3) and 'linear',
  computed as transformers computes it.
- One forward for training, sampling and serving: the KV caches of `krllm.model.cache` (a contiguous
  `KVCache`, or a `SlotBatch` of the serving runner's slot cache where every row has its own slot
  and position) tell it the positions and the mask; prefill (T > 1), decode (T = 1) and a
  multi-token chunk after a cached prefix. Cached attention runs in the cache's dtype (the runner
  keeps it fp32 on CPU) and groups GQA heads for a single query.
- Optional q/k/v biases (`attention_bias`, Qwen2 / Qwen2.5; o_proj has none, as in Qwen2).
- Build on the meta device, materialize, then one documented `init_weights()` (`Llama.build`).
- Optional tied embeddings (`tie_word_embeddings`): `lm_head.weight` *is* `embed_tokens.weight`.

Shapes: B batch, T new tokens, S keys (cached + new), C hidden_size, H query heads, H_kv kv heads,
D head_dim, I intermediate_size, V vocab_size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from krllm.model.cache import causal_mask
from krllm.model.config import ModelConfig, RopeScaling
from krllm.model.fused_loss import linear_cross_entropy


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in fp32 and cast back before scaling (exactly as transformers)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., C) -> (..., C)
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for RoPE with base `rope_theta`; `rotate_half` pairing (dim i with i + D/2).

    Tables are non-persistent buffers (never saved) covering `max_position_embeddings`
    positions; they grow on demand if a longer sequence arrives. `scaling` ('linear', 'llama3')
    rescales the frequencies as transformers does (see `inv_freq`).
    """

    def __init__(self, head_dim: int, max_positions: int, theta: float, scaling: RopeScaling | None = None):
        super().__init__()
        self.head_dim, self.theta, self.scaling = head_dim, theta, scaling
        self.original_max_positions = (scaling.original_max_position_embeddings if scaling is not None else None) \
            or max_positions
        self.register_buffer("cos", torch.empty(max_positions, head_dim), persistent=False)  # (P, D)
        self.register_buffer("sin", torch.empty(max_positions, head_dim), persistent=False)  # (P, D)

    @torch.no_grad()
    def reset_tables(self, max_positions: int | None = None, device: torch.device | None = None) -> None:
        """(Re)compute the tables in fp32; called after materializing from the meta device."""
        n = max_positions or self.cos.shape[0]
        device = device or self.cos.device
        if device.type == "meta":
            return
        inv_freq = self.inv_freq(device)  # (D/2,)
        freqs = torch.arange(n, device=device).float()[:, None] * inv_freq[None, :]  # (P, D/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (P, D)
        self.cos, self.sin = emb.cos(), emb.sin()

    def inv_freq(self, device: torch.device | None = None) -> torch.Tensor:
        """(D/2,) fp32 inverse frequencies theta^(-2i/D), then scaled, with the same operations in the
        same order as `transformers.modeling_rope_utils` (so logits match in fp32):
        - linear: all divided by `factor`;
        - llama3: wavelengths 2*pi/f above original_max / low_freq_factor are divided by `factor`,
          below original_max / high_freq_factor kept, in between blended by a smooth factor."""
        inv_freq = 1.0 / (self.theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.int64, device=device)
                                         .float() / self.head_dim))
        s = self.scaling
        if s is None:
            return inv_freq
        if s.rope_type == "linear":
            return inv_freq / s.factor
        old_context = self.original_max_positions
        low_freq_wavelen, high_freq_wavelen = old_context / s.low_freq_factor, old_context / s.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq)
        smooth = (old_context / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
        smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
        medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
        return torch.where(medium, smoothed, scaled)

    def forward(self, position_ids: torch.Tensor | None, start: int, length: int, dtype: torch.dtype):
        """-> cos, sin of shape (1 or B, T, 1, D) in `dtype`, for positions start..start+T or `position_ids`."""
        needed = start + length if position_ids is None else None
        if needed is not None and needed > self.cos.shape[0]:
            self.reset_tables(max(needed, 2 * self.cos.shape[0]))
        if position_ids is None:
            cos, sin = self.cos[start:start + length][None], self.sin[start:start + length][None]  # (1, T, D)
        else:
            cos, sin = self.cos[position_ids], self.sin[position_ids]  # (B, T, D)
        return cos[:, :, None, :].to(dtype), sin[:, :, None, :].to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) over the last dim split in halves (transformers' convention)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, T, H, D) rotated by position; cos/sin (1|B, T, 1, D)."""
    return x * cos + rotate_half(x) * sin


def causal_attention_lowp(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention as matmuls in q's dtype (bf16/fp16) with the softmax in fp32.

    q (B, H, T, D), k/v (B, H_kv, T, D) -> (B, H, T, D). Same numerics as transformers' eager
    attention (scores rounded to the compute dtype, softmax in fp32); used for CPU training, where
    it is ~2x faster than the fused SDPA kernel in bf16. Memory is O(T^2) per head.
    """
    rep = q.shape[1] // k.shape[1]
    if rep > 1:
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)  # (B, H, T, D)
    T = q.shape[2]
    causal = torch.full((T, T), float("-inf"), device=q.device).triu(1)  # (T, T): -inf above the diagonal
    scores = (q @ k.transpose(-1, -2)).float() * q.shape[-1] ** -0.5 + causal  # (B, H, T, T) fp32
    return torch.softmax(scores, dim=-1).to(q.dtype) @ v


class Attention(nn.Module):
    """Grouped-query self-attention with RoPE and an optional KV cache.

    `causal_kernel(q, k, v)`, when set (`krllm.train.cpu_kernels.use_onednn_attention`), computes
    CPU causal attention without cache or mask in fp32, or under bf16/fp16 autocast, outside
    torch.compile (there SDPA, or `causal_attention_lowp` under autocast, as without it).
    """

    causal_kernel = None

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.kv_heads, cfg.dim_per_head
        c = cfg.hidden_size
        bias = cfg.attention_bias  # Qwen2: q/k/v only
        self.q_proj = nn.Linear(c, self.n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(c, self.n_kv * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(c, self.n_kv * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, c, bias=False)

    def forward(self, x, cos, sin, mask=None, cache=None):
        """x (B, T, C); mask: None (causal over T) or bool (B|1, 1, T, S), True = attend."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim)  # (B, T, H, D)
        k = self.k_proj(x).view(B, T, self.n_kv, self.head_dim)  # (B, T, H_kv, D)
        v = self.v_proj(x).view(B, T, self.n_kv, self.head_dim)  # (B, T, H_kv, D)
        # tables in the projections' dtype: under autocast q, k stay bf16 instead of promoting to fp32
        cos, sin = cos.to(q.dtype), sin.to(q.dtype)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H|H_kv, T, D) views
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)  # (B, H_kv, S, D)
            y = self._attend_cached(q, k, v, mask)  # (B, H, T, D)
            return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))  # (B, T, C)
        cpu_causal = mask is None and T > 1 and q.device.type == "cpu"
        lowp = cpu_causal and q.dtype != torch.float32 and torch.is_autocast_enabled("cpu")  # training, autocast
        fp32 = cpu_causal and q.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
        if (lowp or fp32) and self.causal_kernel is not None and not torch.compiler.is_compiling():
            y = self.causal_kernel(q, k, v)  # (B, H, T, D)
        elif lowp:  # as measured: ~2x faster than SDPA's CPU flash kernel in bf16
            y = causal_attention_lowp(q, k, v)  # (B, H, T, D)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=mask is None and T > 1, enable_gqa=self.n_kv != self.n_heads
            )  # (B, H, T, D)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))  # (B, T, C)

    def _attend_cached(self, q, k, v, mask):
        """q (B, H, T, D) against cached k/v (B, H_kv, S, D) -> (B, H, T, D), in the cache's dtype.

        One query per row (decode) with GQA: the G query heads sharing a KV head go in as G queries of
        one problem, (B, H_kv, G, D), instead of H problems of one query each (same result, 15-20%
        faster on CPU); a mask (B|1, 1, 1, S) broadcasts over them.
        """
        B, H, T, D = q.shape
        qc = q if q.dtype == k.dtype else q.to(k.dtype)
        if T == 1 and self.n_kv != H:
            y = F.scaled_dot_product_attention(qc.reshape(B, self.n_kv, H // self.n_kv, D), k, v, attn_mask=mask)
            y = y.reshape(B, H, 1, D)
        else:
            y = F.scaled_dot_product_attention(qc, k, v, attn_mask=mask, is_causal=mask is None and T > 1,
                                               enable_gqa=self.n_kv != H)
        return y if y.dtype == q.dtype else y.to(q.dtype)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):  # (B, T, C) -> (B, T, C)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.self_attn = Attention(cfg, layer_idx)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, mask=None, cache=None):  # (B, T, C) -> (B, T, C)
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    """Embedding + blocks + final norm: the `model.` prefix of HF's parameter names."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(cfg.dim_per_head, cfg.max_position_embeddings, cfg.rope_theta,
                                          cfg.rope_scaling)


class Llama(nn.Module):
    """Decoder-only causal LM with transformers' `LlamaForCausalLM` parameter names.

    `Llama(cfg)` on a real device initializes its weights with `init_weights()`; under
    `torch.device("meta")` it only records shapes (use `Llama.build` for meta -> device -> init).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = LlamaModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.tie_weights()
        if self.lm_head.weight.device.type != "meta":
            self.init_weights()

    @classmethod
    def build(cls, cfg: ModelConfig, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> "Llama":
        """Shapes on the meta device (no memory, instant), then allocate on `device` and init once."""
        with torch.device("meta"):
            model = cls(cfg)
        model.to_empty(device=device)
        model.tie_weights()
        model.init_weights()
        return model.to(dtype) if dtype is not None else model

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @torch.no_grad()
    def init_weights(self) -> None:
        """The one place weights get their initial values (std = cfg.initializer_range, 0.02 by default).

        - embeddings, q/k/v, gate/up and an untied lm_head: normal(0, std), as transformers'
          `LlamaPreTrainedModel._init_weights`;
        - residual output projections (o_proj, down_proj): normal(0, std / sqrt(2 * num_layers)),
          GPT-2's scaling, so the variance of the residual stream does not grow with depth
          (each block adds two such projections);
        - q/k/v biases (attention_bias): zeros;
        - RMSNorm weights: ones (the block starts as identity-scaled normalisation);
        - RoPE tables: recomputed from `rope_theta` (they are buffers, not parameters).
        """
        cfg = self.config
        std = cfg.initializer_range
        resid_std = std / math.sqrt(2 * cfg.num_hidden_layers)
        nn.init.normal_(self.model.embed_tokens.weight, 0.0, std)
        for block in self.model.layers:
            a, m = block.self_attn, block.mlp
            for lin in (a.q_proj, a.k_proj, a.v_proj, m.gate_proj, m.up_proj):
                nn.init.normal_(lin.weight, 0.0, std)
            for lin in (a.q_proj, a.k_proj, a.v_proj):
                if lin.bias is not None:  # attention_bias (Qwen2): zeros, as transformers
                    nn.init.zeros_(lin.bias)
            nn.init.normal_(a.o_proj.weight, 0.0, resid_std)
            nn.init.normal_(m.down_proj.weight, 0.0, resid_std)
            nn.init.ones_(block.input_layernorm.weight)
            nn.init.ones_(block.post_attention_layernorm.weight)
        nn.init.ones_(self.model.norm.weight)
        if not cfg.tie_word_embeddings:
            nn.init.normal_(self.lm_head.weight, 0.0, std)
        self.model.rotary_emb.reset_tables(cfg.max_position_embeddings, self.lm_head.weight.device)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Unique parameters (a tied lm_head counts once); optionally without the input embedding
        (and without an untied lm_head), the count scaling laws use."""
        seen, total = set(), 0
        for name, p in self.named_parameters():  # named_parameters already yields a tied tensor once
            if id(p) in seen:
                continue
            seen.add(id(p))
            if exclude_embeddings and name in ("model.embed_tokens.weight", "lm_head.weight"):
                continue
            total += p.numel()
        return total

    def forward(
        self,
        input_ids: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        position_ids: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        cache=None,
        return_logits: bool = True,
        logits_to_keep: int = 0,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """input_ids (B, T) -> (logits (B, T, V), mean cross-entropy over targets != -100, or None).

        targets (B, T): next-token ids, already shifted; -100 = ignore.
        position_ids (B, T): defaults to the cache's positions (arange(T) without a cache).
        attn_mask: bool, broadcastable to (B, 1, T, S), True = may attend (e.g. padding mask
          (B, 1, 1, S)); it is ANDed with the causal mask. S = cache.pos + T with a KVCache, else T.
        cache: a `krllm.model.cache` object (`KVCache`, or a `SlotBatch` of the runner's slot cache
          that places each row in its own slot and position); this forward writes the T new
          keys/values and advances it by T.
        return_logits=False (with targets): (None, loss) through `linear_cross_entropy`, which never
          holds the (B, T, V) logits (training: less memory, faster on CPU; same loss up to rounding).
        logits_to_keep > 0 (without targets): logits of the last that many positions only (a prompt's
          next token: no (T, V) logits for a long prompt).
        """
        B, T = input_ids.shape
        x = self.model.embed_tokens(input_ids)  # (B, T, C)
        if cache is None:
            start = 0
            mask = causal_mask(T, 0, attn_mask, x.device) if attn_mask is not None else None
        else:
            start, position_ids, mask = cache.begin(T, position_ids, attn_mask, x.device)
        cos, sin = self.model.rotary_emb(position_ids, start, T, x.dtype)  # (1|B, T, 1, D)
        for block in self.model.layers:
            x = block(x, cos, sin, mask, cache)
        if cache is not None:
            cache.advance(T)
        if targets is not None and not return_logits:
            h = self.model.norm(x).view(B * T, -1)  # (B*T, C)
            mm = getattr(self.lm_head, "mm", None)  # a faster fp32 kernel, if one was installed
            return None, linear_cross_entropy(h, self.lm_head.weight, targets.reshape(B * T), mm=mm)
        if logits_to_keep > 0 and targets is None:
            x = x[:, -logits_to_keep:]
        logits = self.lm_head(self.model.norm(x))  # (B, T | logits_to_keep, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(B * T, -1), targets.reshape(B * T), ignore_index=-100)
        return logits, loss
