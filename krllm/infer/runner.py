"""Serving on top of the model's own forward: one KV-cache row ("slot") per request.

Continuous batching puts requests at different positions in one decode step. The runner keeps a
`SlotKVCache` (krllm.model.cache) and hands the model a `SlotBatch` per step that tells its
forward, row by row, which slot to write and at which position; the PyTorch path *is*
`Llama.forward` (prefill: logits of the last position only). It never changes the model it is
given: parameters, their values and storage stay as they were.

- On CPU, prefill and decode go through the C step (krllm.infer.native: a whole forward for all
  rows in one call, the deliberate specialised copy) when a C compiler is there; otherwise, and on
  GPU/MPS, through the model's forward. The C step reads its own copies of the matrices it needs
  fused (q/k/v, gate/up) or with an RMSNorm weight folded in (q/k/v, gate/up, lm_head), made once
  at construction: build a new runner after changing the weights.
- On CPU attention runs in fp32 whatever the weights' dtype; the cache is fp32, or fp16 (`kv_dtype`; by
  default for bf16 weights where the C step does all attention: `_default_kv_dtype`).

    runner = ModelRunner(model, n_slots=8, max_seq_len=1024)
    logits = runner.prefill(slot=0, ids=[5, 6, 7])            # (V,)
    logits = runner.decode(torch.tensor([42]), n_rows=1)      # (1, V) for slot 0
    # slot 0 decodes while slot 1 prefills a prompt's first 256 tokens, in one forward (chunked prefill)
    logits, first = runner.step(torch.tensor([43]), 1, [True], Chunk(slot=1, start=0, ids=ids[:256], last=False))
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from krllm.errors import KrllmError
from krllm.infer import native
from krllm.model.cache import SlotKVCache

# Prompt tokens per C-step call at prefill: each call reads the weights once for all its rows, and from
# 48 rows on multiplies them as a GEMM (bound by arithmetic; 256-row calls ran the ≈31M model's 1K-token
# prefill 0.78x as fast as 512-row ones). Its buffers grow with it; the logits buffer holds a row per
# call row (a 128k vocabulary: 256 MB of address space) but only wanted rows are ever written.
PREFILL_ROWS = 512


def _fold(weight: torch.Tensor, in_scale: torch.Tensor) -> torch.Tensor:
    """A new (out, in) matrix: weight * in_scale over input columns, computed in fp32, so that
    x_normed @ _fold(W, g).T == (x_normed * g) @ W.T (an RMSNorm weight folded into the next matmul)."""
    return (weight.float() * in_scale.float()).to(weight.dtype).contiguous()


def native_weights(model) -> dict:
    """The C step's weights, as new tensors where they differ from the model's (never aliasing a
    parameter that gets written): per layer (qkv, o, gate_up, down) and the q/k/v bias (fp32, or None),
    lm_head with the final norm folded in, the embedding. o/down/embed are the model's own tensors,
    read only (no copy)."""
    layers, biases = [], []
    for block in model.model.layers:
        a, m = block.self_attn, block.mlp
        qkv = _fold(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]), block.input_layernorm.weight)
        gate_up = _fold(torch.cat([m.gate_proj.weight, m.up_proj.weight]), block.post_attention_layernorm.weight)
        layers.append((qkv, a.o_proj.weight.contiguous(), gate_up, m.down_proj.weight.contiguous()))
        biases.append(None if a.q_proj.bias is None else
                      torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]).float().contiguous())  # (QKV,)
    return dict(layers=layers, qkv_bias=biases if biases[0] is not None else None,
                lm_head=_fold(model.lm_head.weight, model.model.norm.weight),
                embed=model.model.embed_tokens.weight.contiguous())


def quantized_native_weights(model) -> dict | None:
    """native_weights for a model quantized by krllm.model.quant: each fused matrix (q/k/v, gate/up) is
    concatenated once and the model's own quantized buffers become views of it (same values, one copy
    in memory). None when an RMSNorm weight is not 1 (quantize_model folds them; the C step has no norm weight)."""
    from krllm.model.quant import QuantLinear

    norms = [model.model.norm.weight] + [n for b in model.model.layers
                                         for n in (b.input_layernorm.weight, b.post_attention_layernorm.weight)]
    if any(not bool((n == 1).all()) for n in norms):
        return None

    def fused(owner, names) -> native.QMat:
        lins: list[QuantLinear] = [getattr(owner, n) for n in names]
        data = torch.cat([q.weight for q in lins]).contiguous()
        scale = torch.cat([q.weight_scale for q in lins]).contiguous()
        start = 0
        for q in lins:  # the model reads the fused copy from now on: no second copy in memory
            n = q.weight.shape[0]
            q.weight, q.weight_scale = data[start:start + n], scale[start:start + n]
            start += n
        return native.QMat(data, scale)

    def own(q) -> native.QMat:
        return native.QMat(q.weight.contiguous(), q.weight_scale.contiguous())

    layers, biases = [], []
    for block in model.model.layers:
        a, m = block.self_attn, block.mlp
        layers.append((fused(a, ("q_proj", "k_proj", "v_proj")), own(a.o_proj), fused(m, ("gate_proj", "up_proj")),
                       own(m.down_proj)))
        biases.append(None if a.q_proj.bias is None else
                      torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]).float().contiguous())
    return dict(layers=layers, qkv_bias=biases if biases[0] is not None else None, lm_head=own(model.lm_head),
                embed=own(model.model.embed_tokens))


def prompt_tensor(ids: list[int] | torch.Tensor, device: torch.device, max_seq_len: int) -> torch.Tensor:
    """A prompt as a (1, T) id tensor on `device`, checked against the cache (every runner's prefill)."""
    ids = torch.as_tensor(ids, dtype=torch.long, device=device).view(1, -1)  # (1, T)
    if ids.shape[1] == 0:
        raise KrllmError("empty prompt: give at least one token")
    if ids.shape[1] > max_seq_len:
        raise KrllmError(f"prompt of {ids.shape[1]} tokens does not fit max_seq_len={max_seq_len}")
    return ids


class ModelRunner:
    """Prefill one slot / decode a batch of slots; knows token ids and logits, nothing else."""

    def __init__(self, model, n_slots: int, max_seq_len: int, use_native: bool = True,
                 kv_dtype: torch.dtype | None = None):
        cfg = model.config
        self.model, self.cfg = model, cfg
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        if max_seq_len > cfg.max_position_embeddings:
            raise KrllmError(f"max_seq_len={max_seq_len} exceeds the model's max_position_embeddings="
                             f"{cfg.max_position_embeddings}")
        self.vocab_size = cfg.vocab_size
        from krllm.model.quant import quant_spec

        self.quant = quant_spec(model)  # int8 / int4 weights (krllm.model.quant), or None
        lib = native.library() if use_native and self.device.type == "cpu" and self.dtype in native.NATIVE_DTYPES else None
        self.cache = SlotKVCache.for_model(cfg, n_slots, max_seq_len, self.device,
                                           kv_dtype or self._default_kv_dtype(lib))
        self.native = None  # the PyTorch path, until the C step has matched it on one token
        self.native = self._native_decoder(lib, model.model.rotary_emb, max_seq_len) if lib is not None else None
        # Batches up to this many rows take the C step. Few rows are bound by reading the weights,
        # where it is 1.3-2.6x faster than PyTorch; many rows are bound by arithmetic, where it still
        # wins in fp32 and, with AVX-512 BF16, in bf16, but without that it widens bf16 weights to
        # fp32 and is even with oneDNN at ~8 rows. Measured by benchmarks/decode_batch.py.
        self.native_max_rows = (n_slots if self.dtype == torch.float32 or native.features()["avx512_bf16"]
                                else 8)  # quantized models are fp32 here: the C step at every batch size
        self.decode_path = ("PyTorch" if self.native is None else "C step" if self.native_max_rows >= n_slots
                            else f"C step up to {self.native_max_rows} rows, PyTorch above")

    def _default_kv_dtype(self, lib) -> torch.dtype:
        """The cache's dtype when the caller does not choose: the model's on GPUs. On CPU, fp16 for bf16
        weights where the C step does every step's attention (AVX-512 BF16: every batch size) and reads
        fp16: at 4K tokens the cache is most of what a decode step reads, and fp16 halves it (measured
        1.4x decode at 4K on the ≈31M model, benchmarks/decode_long.py), with more mantissa than the bf16
        weights. Otherwise fp32: PyTorch's attention then runs SDPA's fast fp32 kernel on the cache as it
        is, where bf16/fp16 would need SDPA's half kernels (3-4x slower for one query) or a cast of every
        cached key and value at every step (measured 1.9 vs 1.4 ms a layer at 32 rows)."""
        if self.device.type != "cpu":
            return self.dtype
        feats = native.features() if lib is not None else {}
        if self.dtype == torch.bfloat16 and feats.get("kv_fp16") and feats.get("avx512_bf16"):
            return torch.float16
        return torch.float32

    def _native_decoder(self, lib, rot, max_seq_len: int) -> "native.NativeDecoder | None":
        """The C decode step over this runner's weights and cache, if it computes what the PyTorch
        path computes (checked on one token in the still-empty slot 0; a mismatch means a broken build)."""
        if self.cache.k.dtype == torch.float16 and not lib.krllm_features() & 4:
            native.log.warning("the C step was built without fp16 support (no _Float16 / F16C): with an fp16 KV "
                               "cache decoding uses the PyTorch path")
            return None
        w = native_weights(self.model) if self.quant is None else quantized_native_weights(self.model)
        if w is None:
            native.log.warning("a quantized model with RMSNorm weights not folded: decoding uses the PyTorch path")
            return None
        try:
            dec = native.NativeDecoder(
                lib, self.cfg, w["layers"], w["lm_head"], w["embed"], rot.cos[:max_seq_len].float().contiguous(),
                rot.sin[:max_seq_len].float().contiguous(), self.cache.k, self.cache.v,
                max(self.cache.n_slots, PREFILL_ROWS), qkv_bias=w["qkv_bias"],
                group_size=self.quant.group_size if self.quant is not None else 32)
        except ValueError as e:
            if self.quant is None:
                raise
            native.log.warning("%s: decoding uses the PyTorch path", e)
            return None
        token = torch.tensor([min(5, self.vocab_size - 1)], device=self.device)
        want = self.decode(token, 1).clone()  # PyTorch path
        self.free(0)
        got = dec.decode(token, [0], [0])
        # int8/int4: both paths round activations to int8 from fp32 values that differ in the last bit,
        # and a value on a rounding tie moves a random model's logits by ~2% (measured on the ~31M
        # benchmark model: a 1e-6 nudge does the same in PyTorch alone); a broken kernel is far off
        tol = 1e-3 if self.dtype == torch.float32 and self.quant is None else 0.1
        err = (got - want).abs().max().item() / (want.abs().max().item() + 1e-6)
        if not err <= tol:
            native.log.warning("the native decode step disagrees with PyTorch (relative error %.2g): "
                               "decoding uses the PyTorch path", err)
            return None
        return dec

    @property
    def max_seq_len(self) -> int:
        return self.cache.max_seq_len

    # ------------------------------------------------------------------ public API
    @torch.inference_mode()
    def prefill(self, slot: int, ids: list[int] | torch.Tensor) -> torch.Tensor:
        """Run a whole prompt through slot `slot` (replacing what it held) -> last-position logits (V,).
        On the C step in pieces of up to PREFILL_ROWS rows (rows of one slot at consecutive positions)."""
        ids = prompt_tensor(ids, self.device, self.max_seq_len)[0]  # (T,)
        return self._chunk_forward(slot, 0, ids, last=True).clone()

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor, n_rows: int, active: list[bool] | None = None) -> torch.Tensor:
        """One new token for each of slots 0..n_rows-1: tokens (n_rows,) -> logits (n_rows, V) fp32.

        Each active slot appends its token at its own position. Rows that are not `active` (free
        or just-prefilled slots between busy ones) compute garbage that nobody reads, write it to
        the scratch row and do not advance.
        """
        B = n_rows
        active = active if active is not None else [True] * B
        pos, rows = self._decode_rows(B, active)
        if self.native is not None and sum(active) <= self.native_max_rows:
            logits = self.native.decode(tokens.view(B), pos, rows)
            self._advance(B, active)
            return logits
        logits, _ = self.model(tokens.view(B, 1), cache=self.cache.decode(B, active))  # (B, 1, V)
        return logits[:, 0].float()

    def _decode_rows(self, n_rows: int, active: list[bool]) -> tuple[list[int], list[int]]:
        """The C step's positions and cache rows of decode rows 0..n_rows-1 (idle rows: row -1), after
        checking that every active slot has room for one more token."""
        lengths = self.cache.lengths
        for s in range(n_rows):
            if active[s] and lengths[s] >= self.max_seq_len:
                raise KrllmError(f"slot {s} is full ({self.max_seq_len} tokens): finish it before decoding")
        return ([lengths[s] if active[s] else 0 for s in range(n_rows)],
                [s if active[s] else -1 for s in range(n_rows)])

    def _advance(self, n_rows: int, active: list[bool]) -> None:
        """Each active decode row's slot holds one more token."""
        for s in range(n_rows):
            if active[s]:
                self.cache.lengths[s] += 1

    def free(self, slot: int) -> None:
        self.cache.free(slot)

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor, n_rows: int, active: list[bool] | None = None,
             chunk: "Chunk | tuple | None" = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """One engine step: a decode token for each active slot among 0..n_rows-1 (as `decode`) and a
        piece of one prompt (`chunk`: Chunk(slot, start, ids, last)) together, so that a long prompt is
        prefilled over several steps while the other slots keep decoding (chunked prefill).

        -> (decode logits (n_rows, V) fp32 or None when n_rows is 0, logits (V,) of the chunk's last
        token when the chunk ends its prompt (`last`), else None). Both may be views of a buffer the next
        call overwrites. On the C step (when the decode rows would take it) the decode rows and the
        chunk are one call, split into several only where rows exceed its buffers (the prompt's first
        rows go first, so the last call holds the decode rows and the chunk's end).
        """
        tokens = tokens[:n_rows]
        if chunk is None:
            return (self.decode(tokens, n_rows, active) if n_rows else None), None
        slot, start, ids, last = Chunk(*chunk)
        ids = self._chunk_ids(slot, start, ids)
        active = active if active is not None else [True] * n_rows
        if slot < n_rows and active[slot]:
            raise KrllmError(f"slot {slot} cannot decode and prefill in the same step")
        n_active = sum(active[:n_rows])
        if self.native is None or n_active > self.native_max_rows:
            decoded = self.decode(tokens, n_rows, active) if n_active else None
            return decoded, self._chunk_forward(slot, start, ids, last)
        return self._step_native(tokens, n_rows, active, slot, start, ids, last)

    def _chunk_ids(self, slot: int, start: int, ids) -> torch.Tensor:
        """A chunk's ids as a (T,) tensor, checked: it continues what the slot holds (start 0 = a new
        prompt, replacing it) and fits the cache."""
        ids = torch.as_tensor(ids, dtype=torch.long, device=self.device).view(-1)  # (T,)
        if ids.shape[0] == 0:
            raise KrllmError("empty prompt chunk: give at least one token")
        if start and self.cache.lengths[slot] != start:
            raise KrllmError(f"slot {slot} holds {self.cache.lengths[slot]} tokens: a chunk at {start} does not follow")
        if start + ids.shape[0] > self.max_seq_len:
            raise KrllmError(f"prompt of {start + ids.shape[0]} tokens does not fit max_seq_len={self.max_seq_len}")
        return ids

    def _chunk_forward(self, slot: int, start: int, ids: torch.Tensor, last: bool) -> torch.Tensor | None:
        """A chunk alone: through the C step in pieces of its buffer's rows, else the model's forward."""
        T = ids.shape[0]
        if self.native is not None:
            return self._step_native(ids[:0], 0, [], slot, start, ids, last)[1]
        logits, _ = self.model(ids[None], cache=self.cache.prefill(slot, start, T), logits_to_keep=1)  # (1, 1, V)
        return logits[0, -1].float() if last else None

    def _step_native(self, tokens: torch.Tensor, n_rows: int, active: list[bool], slot: int, start: int,
                     ids: torch.Tensor, last: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Decode rows + a chunk through the C step: the chunk's head alone in calls of `max_rows` rows,
        then one call with the decode rows (idle ones as row -1) and the chunk's tail."""
        R, T = self.native.max_rows, ids.shape[0]
        if n_rows >= R:  # no room for a chunk row beside the decode rows: the chunk first, on its own
            chunk_logits = self._step_native(tokens[:0], 0, [], slot, start, ids, last)[1]
            chunk_logits = chunk_logits.clone() if chunk_logits is not None else None
            return self.decode(tokens, n_rows, active), chunk_logits
        pos, rows = self._decode_rows(n_rows, active)
        tail = min(T, R - n_rows)  # chunk rows that share the call with the decode rows
        for a in range(0, T - tail, R):
            b = min(a + R, T - tail)
            self.native.decode(ids[a:b].contiguous(), list(range(start + a, start + b)), [slot] * (b - a),
                               want=[False] * (b - a))
        a = T - tail
        want = [True] * n_rows + [False] * (tail - 1) + [last]
        logits = self.native.decode(torch.cat([tokens[:n_rows].view(n_rows), ids[a:]]),
                                    pos + list(range(start + a, start + T)), rows + [slot] * tail, want)
        self._advance(n_rows, active)
        self.cache.lengths[slot] = start + T
        return (logits[:n_rows] if n_rows else None), (logits[n_rows + tail - 1] if last else None)


class Chunk(NamedTuple):
    """A piece of one prompt for `ModelRunner.step`: ids (T,) of slot `slot` at positions start..start+T;
    `last`: it ends the prompt (its last token's logits are computed)."""

    slot: int
    start: int
    ids: list[int] | torch.Tensor
    last: bool = True
