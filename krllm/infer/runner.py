"""The model's forward pass specialised for serving: one KV-cache row ("slot") per request.

Why not `Llama.forward` with a cache object? Continuous batching puts requests at different
positions in one decode step. `Llama.forward` takes a single `cache.pos` for the whole batch and
always lets the query attend to the key at that shared position, which is right for a padded
batch but wrong for rows of different lengths. This runner computes exactly the same function
(same weights, same RMSNorm / RoPE / GQA attention / SwiGLU math; a test checks its logits
against `Llama.forward` and transformers) with per-row positions, and does less work per token:

- on CPU, prefill and decode go through the C step (krllm.infer.native: a whole forward for all
  rows in one call) when a C compiler is there; otherwise, and on GPU/MPS, through PyTorch below;
- q/k/v and gate/up fused into one matmul each (the model's own Linear weights become row views
  of the fused tensors, so `Llama.forward` still works); on CPU the matrices are copied once, at
  construction (RMSNorm weights folded in, for the C step or in oneDNN's packed layout): build a
  new runner after changing the weights;
- static cache `(L, slots, H_kv, S_max, D)`, written in place, read as views;
- prefill computes logits for the last position only;
- decode attention without a mask when every row is at the same position (e.g. batch 1); on
  CPU the cache and attention stay fp32 whatever the weights' dtype.

    runner = ModelRunner(model, n_slots=8, max_seq_len=1024)
    logits = runner.prefill(slot=0, ids=[5, 6, 7])            # (V,)
    logits = runner.decode(torch.tensor([42]), n_rows=1)      # (1, V) for slot 0
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from krllm.errors import KrllmError
from krllm.infer import native
from krllm.infer.kernels import PackedMatmul


# Prompt tokens per C-step call at prefill: each call reads the weights once for all its rows, and
# its buffers grow with it (64 rows of a 128k vocabulary's logits are 32 MB).
PREFILL_ROWS = 64


class SlotKVCache:
    """Static keys/values for `n_slots` independent sequences; `lengths[s]` = tokens cached in slot s."""

    def __init__(self, n_layers: int, n_slots: int, n_kv: int, max_seq_len: int, head_dim: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        # One extra row (index n_slots) is scratch space: idle rows of a decode step write there,
        # so they never clobber a slot that was just prefilled and joins at the next step.
        shape = (n_layers, n_slots + 1, n_kv, max_seq_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)  # (L, N + 1, H_kv, S_max, D)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_seq_len = max_seq_len
        self.lengths = [0] * n_slots

    @property
    def n_slots(self) -> int:
        return len(self.lengths)

    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, T, H, D); cos/sin (B, T, 1, D); transformers' rotate_half pairing (i with i + D/2)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class ModelRunner:
    """Prefill one slot / decode a batch of slots; knows token ids and logits, nothing else."""

    def __init__(self, model, n_slots: int, max_seq_len: int, use_native: bool = True):
        cfg = model.config
        self.model = model.eval()
        self.cfg = cfg
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        if max_seq_len > cfg.max_position_embeddings:
            raise KrllmError(f"max_seq_len={max_seq_len} exceeds the model's max_position_embeddings="
                             f"{cfg.max_position_embeddings}")
        self.n_heads, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.kv_heads, cfg.dim_per_head
        self.eps = cfg.rms_norm_eps
        self.gqa = self.n_kv != self.n_heads
        lib = native.library() if use_native and self.device.type == "cpu" and self.dtype in native.NATIVE_DTYPES else None
        self._fuse_weights(pack=lib is None)
        rot = model.model.rotary_emb
        if rot.cos.shape[0] < max_seq_len:
            rot.reset_tables(max_seq_len)
        self.cos = rot.cos[:max_seq_len].to(self.dtype)  # (S_max, D)
        self.sin = rot.sin[:max_seq_len].to(self.dtype)
        # rotate_half(x) = (-x2, x1) = roll(x, D/2) * (-1 on the first half): fold the sign into sin
        half = self.head_dim // 2
        self.sin_signed = torch.cat([-self.sin[:, :half], self.sin[:, half:]], dim=-1)  # (S_max, D)
        # On CPU the cache is fp32 even for bf16 weights: attention then runs SDPA's fast fp32 kernel
        # on the cache as it is, where bf16 would need SDPA's bf16 kernel (3-4x slower for one query)
        # or a cast of every cached key and value at every step (measured 1.9 vs 1.4 ms a layer at
        # 32 rows). It costs 2x KV memory in bf16; on GPUs the cache keeps the model's dtype.
        self.cache_dtype = torch.float32 if self.device.type == "cpu" else self.dtype
        self.cache = SlotKVCache(cfg.num_hidden_layers, n_slots, self.n_kv, max_seq_len, self.head_dim,
                                 self.device, self.cache_dtype)
        self._k_layers, self._v_layers = self.cache.k.unbind(0), self.cache.v.unbind(0)  # per-layer views
        self._arange = torch.arange(max_seq_len, device=self.device)  # (S_max,)
        self.native = None  # the PyTorch path, until the C step has matched it on one token
        self.native = self._native_decoder(lib, rot, max_seq_len) if lib is not None else None
        # Batches up to this many rows take the C step. Few rows are bound by reading the weights,
        # where it is 1.3-2.6x faster than PyTorch; many rows are bound by arithmetic, where it still
        # wins in fp32 and, with AVX-512 BF16, in bf16, but without that it widens bf16 weights to
        # fp32 and is even with oneDNN at ~8 rows. Measured by benchmarks/decode_batch.py.
        self.native_max_rows = (n_slots if self.dtype == torch.float32 or native.features()["avx512_bf16"]
                                else 8)
        self.decode_path = ("PyTorch" if self.native is None else "C step" if self.native_max_rows >= n_slots
                            else f"C step up to {self.native_max_rows} rows, PyTorch above")

    def _native_decoder(self, lib, rot, max_seq_len: int) -> "native.NativeDecoder | None":
        """The C decode step over this runner's weights and cache, if it computes what the PyTorch
        path computes (checked on one token in the still-empty slot 0; a mismatch means a broken build)."""
        dec = native.NativeDecoder(
            lib, self.cfg, [(lw["qkv"].weight, lw["o"].weight, lw["gate_up"].weight, lw["down"].weight)
                            for lw in self.layers],
            self.lm_head.weight, self.embed.contiguous(), rot.cos[:max_seq_len].float().contiguous(),
            rot.sin[:max_seq_len].float().contiguous(), self.cache.k, self.cache.v,
            max(self.cache.n_slots, PREFILL_ROWS))
        token = torch.tensor([min(5, self.vocab_size - 1)], device=self.device)
        want = self.decode(token, 1).clone()  # PyTorch path
        self.free(0)
        got = dec.decode(token, [0], [0])
        tol = 1e-3 if self.dtype == torch.float32 else 0.1
        err = (got - want).abs().max().item() / (want.abs().max().item() + 1e-6)
        if not err <= tol:
            native.log.warning("the native decode step disagrees with PyTorch (relative error %.2g): "
                               "decoding uses the PyTorch path", err)
            return None
        return dec

    @torch.no_grad()
    def _fuse_weights(self, pack: bool = True) -> None:
        """Concatenate q/k/v and gate/up into one matrix each, and wrap every matrix in a PackedMatmul.

        One matmul instead of three (or two) per token saves call overhead; the model's own Linear
        weights are re-pointed at row slices of the concatenated tensors, so no memory is duplicated
        and `Llama.forward` still computes the same function. On CPU, PackedMatmul adds oneDNN's
        packed copy of each matrix (the fast layout for decoding; see krllm.infer.kernels); with
        pack=False (the native decode step reads the weights itself) it keeps a plain copy with the
        norm weight folded in instead.
        """
        def fused(*linears, scale=None):  # -> PackedMatmul over the (sum of out, in) concatenation
            if len(linears) == 1:
                return PackedMatmul(linears[0].weight, scale, pack)
            w = torch.cat([lin.weight for lin in linears], dim=0)
            start = 0
            for lin in linears:
                n = lin.weight.shape[0]
                lin.weight.data = w[start:start + n]
                start += n
            return PackedMatmul(w, scale, pack)

        self.layers = []
        for block in self.model.model.layers:
            a, m = block.self_attn, block.mlp
            nq, nk, ni = a.q_proj.weight.shape[0], a.k_proj.weight.shape[0], m.gate_proj.weight.shape[0]
            self.layers.append(dict(
                # each RMSNorm's weight is folded into the matmul that reads its output
                qkv=fused(a.q_proj, a.k_proj, a.v_proj, scale=block.input_layernorm.weight),  # C -> (H + 2KV) D
                o=fused(a.o_proj),  # H D -> C
                gate_up=fused(m.gate_proj, m.up_proj, scale=block.post_attention_layernorm.weight),  # C -> 2I
                down=fused(m.down_proj),  # I -> C
                nq=nq, nk=nk, ni=ni,
            ))
        self.lm_head = fused(self.model.lm_head, scale=self.model.model.norm.weight)  # C -> V (tied or not)
        self.embed = self.model.model.embed_tokens.weight  # (V, C); rows are gathered

    @property
    def max_seq_len(self) -> int:
        return self.cache.max_seq_len

    @property
    def vocab_size(self) -> int:
        return self.lm_head.out_features

    # ------------------------------------------------------------------ forward pieces
    def _layer(self, x, lw, cos, sin, attend):
        """x (B, T, C) -> (B, T, C); `attend(q, k, v, layer_idx)` stores k/v and returns (B, H, T, D)."""
        B, T, _ = x.shape
        h = self._normalize(x)
        qkv = lw["qkv"](h)  # (B, T, (H + 2 H_kv) D)
        q = qkv[..., :lw["nq"]].view(B, T, self.n_heads, self.head_dim)
        k = qkv[..., lw["nq"]:lw["nq"] + lw["nk"]].view(B, T, self.n_kv, self.head_dim)
        v = qkv[..., lw["nq"] + lw["nk"]:].view(B, T, self.n_kv, self.head_dim)
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        y = attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # (B, H, T, D)
        x = x + lw["o"](y.transpose(1, 2).reshape(B, T, -1))
        h = self._normalize(x)
        gu = lw["gate_up"](h)  # (B, T, 2 I)
        return x + lw["down"](F.silu(gu[..., :lw["ni"]]) * gu[..., lw["ni"]:])

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        """RMSNorm without its weight (folded into the next matmul), normalised in fp32 like the model."""
        if x.dtype == torch.float32:
            return F.rms_norm(x, (x.shape[-1],), None, self.eps)
        return F.rms_norm(x.float(), (x.shape[-1],), None, self.eps).to(x.dtype)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self._normalize(x)).float()

    # ------------------------------------------------------------------ public API
    @torch.inference_mode()
    def prefill(self, slot: int, ids: list[int] | torch.Tensor) -> torch.Tensor:
        """Run a whole prompt through slot `slot` (replacing what it held) -> last-position logits (V,)."""
        ids = torch.as_tensor(ids, dtype=torch.long, device=self.device).view(1, -1)  # (1, T)
        T = ids.shape[1]
        if T == 0:
            raise KrllmError("empty prompt: give at least one token")
        if T > self.max_seq_len:
            raise KrllmError(f"prompt of {T} tokens does not fit max_seq_len={self.max_seq_len}")
        if self.native is not None:
            return self._prefill_native(slot, ids[0])
        cos, sin = self.cos[:T][None, :, None], self.sin[:T][None, :, None]  # (1, T, 1, D)
        ck, cv = self.cache.k, self.cache.v

        x = F.embedding(ids, self.embed)  # (1, T, C)
        for i, lw in enumerate(self.layers):
            def attend(q, k, v, i=i):  # (1, H|H_kv, T, D)
                ck[i, slot, :, :T] = k[0]
                cv[i, slot, :, :T] = v[0]
                cdt = self.cache_dtype
                y = F.scaled_dot_product_attention(q.to(cdt), k.to(cdt), v.to(cdt), is_causal=T > 1,
                                                   enable_gqa=self.gqa)
                return y.to(q.dtype)
            x = self._layer(x, lw, cos, sin, attend)
        self.cache.lengths[slot] = T
        return self._logits(x[:, -1])[0]  # (V,)

    def _prefill_native(self, slot: int, ids: torch.Tensor) -> torch.Tensor:
        """The prompt through the C step in chunks of up to PREFILL_ROWS tokens (rows of one slot at
        consecutive positions), logits for the last token only."""
        T = ids.shape[0]
        for start in range(0, T, PREFILL_ROWS):
            chunk = ids[start:start + PREFILL_ROWS].contiguous()
            n = chunk.shape[0]
            logits = self.native.decode(chunk, list(range(start, start + n)), [slot] * n,
                                        want=[False] * (n - 1) + [start + n == T])
        self.cache.lengths[slot] = T
        return logits[n - 1].clone()

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor, n_rows: int, active: list[bool] | None = None) -> torch.Tensor:
        """One new token for each of slots 0..n_rows-1: tokens (n_rows,) -> logits (n_rows, V).

        Each active slot appends its token at its own position. Rows that are not `active` (free
        or just-prefilled slots between busy ones) compute garbage that nobody reads, write it to
        the scratch row and do not advance.

        Decode works on 2-D activations (B, C): for one row, `F.linear` on a (1, C) matrix takes
        the fast matrix-vector path, while a (1, 1, C) input goes through a much slower
        batched-matmul path on CPU (measured 4x on small layers).
        """
        B = n_rows
        lengths = self.cache.lengths
        active = active if active is not None else [True] * B
        pos_list = [lengths[s] if active[s] else 0 for s in range(B)]
        for s in range(B):
            if active[s] and pos_list[s] >= self.max_seq_len:
                raise KrllmError(f"slot {s} is full ({self.max_seq_len} tokens): finish it before decoding")
        if self.native is not None and sum(active) <= self.native_max_rows:
            logits = self.native.decode(tokens.view(B), pos_list, [s if active[s] else -1 for s in range(B)])
            for s in range(B):
                if active[s]:
                    lengths[s] += 1
            return logits
        p0 = pos_list[0]
        simple = all(active) and all(p == p0 for p in pos_list)  # e.g. batch 1, or equal-length prompts
        S = max(pos_list) + 1
        if simple:  # views only: no index tensors, no mask
            cos, sin = self.cos[p0:p0 + 1][:, None], self.sin_signed[p0:p0 + 1][:, None]  # (1, 1, D)
            mask = None
        else:
            pos = torch.tensor(pos_list, device=self.device)  # (B,)
            scratch = self.cache.n_slots
            rows = torch.tensor([s if active[s] else scratch for s in range(B)], device=self.device)  # (B,)
            cos, sin = self.cos[pos][:, None], self.sin_signed[pos][:, None]  # (B, 1, D)
            mask = (self._arange[:S][None, :] <= pos[:, None])[:, None, None, :]  # (B, 1, 1, S)
        H, KV, D = self.n_heads, self.n_kv, self.head_dim
        half = D // 2
        cast = self.cache_dtype != self.dtype

        # Few tensor ops per layer: at batch 1 a small model spends as much time dispatching ops as
        # multiplying, so views are taken once and dtype casts only happen when dtypes differ.
        x = F.embedding(tokens.view(B), self.embed)  # (B, C)
        for lw, kc, vc in zip(self.layers, self._k_layers, self._v_layers):
            qkv = lw["qkv"](self._normalize(x)).view(B, H + 2 * KV, D)
            qk = qkv[:, :H + KV]
            qk = qk * cos + qk.roll(half, -1) * sin  # RoPE on q and k at once: rotate_half via roll
            q, k, v = qk[:, :H], qk[:, H:], qkv[:, H + KV:]  # (B, H, D), (B, KV, D), (B, KV, D)
            if cast:
                k, v = k.to(self.cache_dtype), v.to(self.cache_dtype)
            if simple:
                kc[:B, :, p0] = k
                vc[:B, :, p0] = v
            else:
                kc[rows, :, pos] = k
                vc[rows, :, pos] = v
            y = self._attend_one(q, kc[:B, :, :S], vc[:B, :, :S], mask)  # (B, H, D)
            x = x + lw["o"](y.view(B, H * D))
            gu = lw["gate_up"](self._normalize(x))  # (B, 2 I)
            x = x + lw["down"](F.silu(gu[:, :lw["ni"]]) * gu[:, lw["ni"]:])
        for s in range(B):
            if active[s]:
                lengths[s] += 1
        return self._logits(x)  # (B, V)

    def _attend_one(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None):
        """One query per row against its cached keys: q (B, H, D), k/v (B, KV, S, D) -> (B, H, D),
        computed in the cache's dtype (fp32 on CPU, see __init__).

        The query heads that share a KV head (GQA: head h reads KV head h // G) go in as G queries
        of one attention problem, (B, KV, G, D), instead of H problems of one query each: the same
        result, 15-20% faster on CPU.
        """
        B, H, D = q.shape
        KV = k.shape[1]
        qg = (q if q.dtype == k.dtype else q.to(k.dtype)).reshape(B, KV, H // KV, D)
        y = F.scaled_dot_product_attention(qg, k, v, attn_mask=mask).reshape(B, H, D)
        return y if y.dtype == q.dtype else y.to(q.dtype)

    def free(self, slot: int) -> None:
        self.cache.lengths[slot] = 0
