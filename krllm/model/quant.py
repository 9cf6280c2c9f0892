"""Weight-only int8 / int4 quantization of krllm's Llama: formats, modules, save and load.

Why: decoding on CPU is bound by reading the weights, so 1 byte (int8) or half a byte (int4) per
weight instead of 4 (fp32) or 2 (bf16) is what makes a small model decode faster, and smaller on disk.

Formats (symmetric: zero is exactly 0, no zero point):
- int8: one fp32 scale per output row, q = round(w / s) in [-127, 127], s = max|row| / 127.
- int4: one fp32 scale per `group_size` input columns of a row (default 32, as llama.cpp's q4_0),
  q4_0's rule: d = m / -8 with m the group's value of largest magnitude, q = round(w / d) clamped to
  [-8, 7]; stored as q + 8 (0..15), two per byte: in each run of 32 columns, byte j holds column j in
  its low nibble and column j + 16 in its high nibble (q4_0's order, which SIMD unpacks without shuffles).

Activations: every quantized matmul rounds its input to int8 in blocks of ACT_BLOCK = 32 columns
(one fp32 scale per block: llama.cpp's q8_0), so the C step (krllm/infer/csrc/decode_cpu.c) can take
integer dot products. `QuantLinear` (the PyTorch path, any device) computes the same rounding, so both
paths produce the same logits up to float summation order.

Every linear layer is quantized (q/k/v/o, gate/up/down, lm_head) and so is the embedding (rows are
dequantized at lookup). The RMSNorm weights are first folded into the matrices that read the norms'
outputs (q/k/v, gate/up, lm_head) and set to 1: the C step folds them anyway, and folding before
rounding makes both paths round the very same matrices.

    model = quantize_model(model, "int4", group_size=32)   # in place, returns it
    save_quantized(model, "runs/x/int4", tokenizer_dir="runs/x/hf")
    model = load_quantized("runs/x/int4")                   # needs no fp32 weights
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from krllm.errors import KrllmError

FORMATS = ("int8", "int4")
ACT_BLOCK = 32  # activation columns per int8 scale (q8_0)
PACK = 32  # int4 columns per nibble-packing run (low nibble j, high nibble j + 16)
CONFIG_KEY = "krllm_quantization"  # the entry of config.json that marks a quantized directory
DEFAULT_GROUP_SIZE = 32


@dataclass(frozen=True)
class QuantSpec:
    """How a model was quantized (stored under config.json's `krllm_quantization`)."""

    format: str  # int8 | int4 (the linear layers)
    group_size: int = DEFAULT_GROUP_SIZE  # int4 only
    head_format: str | None = None  # lm_head and embedding; None: same as `format`
    version: int = 1

    @property
    def head(self) -> str:
        return self.head_format or self.format

    def check(self) -> "QuantSpec":
        for f in (self.format, self.head):
            if f not in FORMATS:
                raise KrllmError(f"unknown quantization format {f!r}: use {' or '.join(FORMATS)}")
        if "int4" in (self.format, self.head) and (self.group_size <= 0 or self.group_size % PACK):
            raise KrllmError(f"int4 group_size {self.group_size}: use a positive multiple of {PACK} (e.g. 32, 64, 128)")
        return self


# ---------------------------------------------------------------------------- the formats

def padded(in_features: int) -> int:
    """Stored columns: in_features rounded up to whole 32-column blocks (the extra columns are 0)."""
    return -(-in_features // PACK) * PACK


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) float -> (int8 (out, padded(in)), fp32 scale (out,)): per-row symmetric."""
    w = w.detach().float()
    scale = w.abs().amax(dim=1) / 127.0
    q = torch.round(w / torch.where(scale == 0, 1.0, scale)[:, None]).clamp_(-127, 127)
    q = F.pad(q, (0, padded(w.shape[1]) - w.shape[1]))
    return q.to(torch.int8).contiguous(), scale.contiguous()


def quantize_int4(w: torch.Tensor, group_size: int = DEFAULT_GROUP_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) float -> (uint8 (out, padded(in) / 2) packed nibbles, fp32 scale (out, ceil(in / group_size)));
    a last group narrower than group_size has its own scale."""
    w = w.detach().float()
    out_f, in_f = w.shape
    n_groups = -(-in_f // group_size)
    g = F.pad(w, (0, n_groups * group_size - in_f)).view(out_f, n_groups, group_size)
    idx = g.abs().argmax(dim=2, keepdim=True)
    scale = (g.gather(2, idx) / -8.0).squeeze(2)  # q4_0: the largest-magnitude value maps to -8
    q = torch.round(g / torch.where(scale == 0, 1.0, scale)[..., None]).clamp_(-8, 7) + 8
    q = q.to(torch.uint8).view(out_f, -1)[:, : padded(in_f)].reshape(out_f, -1, PACK)
    packed = q[..., : PACK // 2] | (q[..., PACK // 2:] << 4)
    return packed.reshape(out_f, -1).contiguous(), scale.contiguous()


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """uint8 (out, padded / 2) -> int8 values -8..7 (out, padded)."""
    out_f = packed.shape[0]
    p = packed.view(out_f, -1, PACK // 2)
    q = torch.cat([p & 0xF, p >> 4], dim=2).view(out_f, -1)
    return q.to(torch.int8) - 8


def dequantize(qweight: torch.Tensor, scale: torch.Tensor, fmt: str, group_size: int = DEFAULT_GROUP_SIZE,
               in_features: int | None = None) -> torch.Tensor:
    """Stored form -> fp32 (out, in_features) (default: every stored column)."""
    if fmt == "int8":
        w = qweight.float() * scale[:, None]
    else:
        q = unpack_int4(qweight).float()
        out_f, n = q.shape
        n_groups = scale.shape[1]
        q = F.pad(q, (0, max(n_groups * group_size - n, 0)))[:, : n_groups * group_size]
        w = (q.view(out_f, n_groups, group_size) * scale[..., None]).view(out_f, -1)
    return w[:, :in_features] if in_features is not None else w


def quantize_activations(x: torch.Tensor) -> torch.Tensor:
    """x rounded to int8 per block of ACT_BLOCK columns (scale max|block| / 127), returned as float:
    what the C step's integer dot products see (a last partial block is its own block)."""
    x = x.float()
    n = x.shape[-1]
    pad = (-n) % ACT_BLOCK
    xp = F.pad(x, (0, pad)) if pad else x
    b = xp.reshape(*x.shape[:-1], -1, ACT_BLOCK)
    s = b.abs().amax(dim=-1, keepdim=True) / 127.0
    q = torch.round(b / torch.where(s == 0, 1.0, s)).clamp_(-127, 127)
    return (q * s).reshape(xp.shape)[..., :n]


# ---------------------------------------------------------------------------- the modules

def _quantized_buffers(module: nn.Module, rows: int, cols: int, fmt: str, group_size: int, device) -> None:
    """Empty `weight` (int8 (rows, padded cols), or uint8 two columns a byte) and `weight_scale` (fp32:
    one per row, or one per row and int4 group) buffers, in the layout quantize_int8 / quantize_int4 fill."""
    shape = (rows, padded(cols)) if fmt == "int8" else (rows, padded(cols) // 2)
    scale_shape = (rows,) if fmt == "int8" else (rows, -(-cols // group_size))
    module.register_buffer("weight", torch.zeros(shape, dtype=torch.int8 if fmt == "int8" else torch.uint8,
                                                 device=device))
    module.register_buffer("weight_scale", torch.zeros(scale_shape, dtype=torch.float32, device=device))


class QuantLinear(nn.Module):
    """A Linear whose weight is stored quantized; forward dequantizes it (any device) and rounds the
    input per ACT_BLOCK as the C step does. Buffers: `weight` (int8, or uint8 packed) and `weight_scale`."""

    def __init__(self, in_features: int, out_features: int, fmt: str, group_size: int = DEFAULT_GROUP_SIZE,
                 bias: bool = False, device=None):
        super().__init__()
        self.in_features, self.out_features, self.fmt, self.group_size = in_features, out_features, fmt, group_size
        _quantized_buffers(self, out_features, in_features, fmt, group_size, device)
        self.bias = nn.Parameter(torch.zeros(out_features, device=device)) if bias else None

    @classmethod
    def from_linear(cls, name: str, lin: nn.Linear, fmt: str, group_size: int,
                    in_scale: torch.Tensor | None = None) -> "QuantLinear":
        """Quantize `lin` (its weight times `in_scale` over input columns, if given: a folded norm)."""
        w = lin.weight.detach().float()
        if in_scale is not None:
            w = w * in_scale.detach().float()
        q = cls(lin.in_features, lin.out_features, fmt, group_size, bias=lin.bias is not None, device=w.device)
        q.weight, q.weight_scale = quantize_int8(w) if fmt == "int8" else quantize_int4(w, group_size)
        if lin.bias is not None:
            q.bias = nn.Parameter(lin.bias.detach().float().clone())
        return q

    def dequantized(self) -> torch.Tensor:
        return dequantize(self.weight, self.weight_scale, self.fmt, self.group_size, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(quantize_activations(x), self.dequantized(), None if self.bias is None else self.bias.float())
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        g = f", group_size={self.group_size}" if self.fmt == "int4" else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.fmt}{g}"


class QuantEmbedding(nn.Module):
    """An embedding stored like a QuantLinear's weight (vocab, hidden); rows are dequantized at lookup."""

    def __init__(self, num_embeddings: int, dim: int, fmt: str, group_size: int = DEFAULT_GROUP_SIZE, device=None):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.fmt, self.group_size = num_embeddings, dim, fmt, group_size
        _quantized_buffers(self, num_embeddings, dim, fmt, group_size, device)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        rows = dequantize(self.weight[flat], self.weight_scale[flat], self.fmt, self.group_size, self.embedding_dim)
        return rows.view(*ids.shape, self.embedding_dim)


# ---------------------------------------------------------------------------- whole models

def _llama(model):
    from krllm.model.llama import Llama

    if not isinstance(model, Llama):
        raise KrllmError(f"int8/int4 quantization works on krllm's Llama (model_type llama or qwen2), "
                         f"not {type(model).__name__}")
    return model


def quant_spec(model) -> QuantSpec | None:
    """How `model` is quantized (None: not quantized)."""
    return getattr(model, "quant_spec", None)


@torch.no_grad()
def quantize_model(model, fmt: str, group_size: int = DEFAULT_GROUP_SIZE, head_format: str | None = None):
    """Quantize krllm's Llama in place (-> the same model): every linear layer and the embedding, with
    the RMSNorm weights folded in first (see the module docstring). Errors name the layer that does not fit."""
    model = _llama(model)
    if quant_spec(model) is not None:
        raise KrllmError(f"the model is already quantized ({quant_spec(model).format})")
    spec = QuantSpec(fmt, group_size, head_format).check()
    cfg = model.config
    embed = model.model.embed_tokens.weight
    for i, block in enumerate(model.model.layers):
        a, m = block.self_attn, block.mlp
        for name, owner, norm in (("q_proj", a, block.input_layernorm), ("k_proj", a, block.input_layernorm),
                                  ("v_proj", a, block.input_layernorm), ("o_proj", a, None),
                                  ("gate_proj", m, block.post_attention_layernorm),
                                  ("up_proj", m, block.post_attention_layernorm), ("down_proj", m, None)):
            path = f"model.layers.{i}.{'self_attn' if owner is a else 'mlp'}.{name}"
            setattr(owner, name, QuantLinear.from_linear(path, getattr(owner, name), spec.format, group_size,
                                                         None if norm is None else norm.weight))
        block.input_layernorm.weight.fill_(1.0)
        block.post_attention_layernorm.weight.fill_(1.0)
    model.lm_head = QuantLinear.from_linear("lm_head", model.lm_head, spec.head, group_size, model.model.norm.weight)
    model.model.norm.weight.fill_(1.0)
    q_embed = QuantEmbedding(cfg.vocab_size, cfg.hidden_size, spec.head, group_size, device=embed.device)
    q_embed.weight, q_embed.weight_scale = (quantize_int8(embed) if spec.head == "int8"
                                            else quantize_int4(embed, group_size))
    model.model.embed_tokens = q_embed
    model.float()  # norms, biases, RoPE tables: fp32 next to integer weights
    model.quant_spec = spec
    return model


def _empty_quantized(cfg, spec: QuantSpec):
    """A krllm Llama of config `cfg` with quantized modules of the right shapes (zeros)."""
    from krllm.model.llama import Llama

    with torch.device("meta"):
        model = Llama(cfg)
    model.to_empty(device="cpu")
    for block in model.model.layers:
        for owner in (block.self_attn, block.mlp):
            for name, lin in list(owner.named_children()):
                if isinstance(lin, nn.Linear):
                    setattr(owner, name, QuantLinear(lin.in_features, lin.out_features, spec.format,
                                                     spec.group_size, bias=lin.bias is not None))
    model.lm_head = QuantLinear(cfg.hidden_size, cfg.vocab_size, spec.head, spec.group_size)
    model.model.embed_tokens = QuantEmbedding(cfg.vocab_size, cfg.hidden_size, spec.head, spec.group_size)
    model.quant_spec = spec
    return model


def save_quantized(model, out_dir: str | Path, tokenizer_dir: str | Path | None = None) -> Path:
    """Write a quantized model as an HF-style directory, atomically: model.safetensors (`<name>.weight`
    int8 / uint8 packed, `<name>.weight_scale` fp32, norms and biases fp32), config.json with a
    `krllm_quantization` entry, generation_config.json, and the tokenizer files of `tokenizer_dir`.
    `krllm.model.load.load` recognises the directory and needs nothing else."""
    from krllm.model.hf import write_hf_dir

    model = _llama(model)
    spec = quant_spec(model)
    if spec is None:
        raise KrllmError("save_quantized needs a quantized model (krllm.model.quant.quantize_model, or load "
                         "with dtype int8 / int4)")
    tok_dir = Path(tokenizer_dir) if tokenizer_dir is not None else None
    if tok_dir is not None and not tok_dir.is_dir():
        raise KrllmError(f"tokenizer directory {tok_dir} does not exist")
    tensors = {name: t.detach().contiguous().cpu() for name, t in model.state_dict().items()
               if not name.startswith("model.rotary_emb")}
    cfg = model.config
    hf_config = cfg.to_hf_dict()
    hf_config["tie_word_embeddings"] = False  # lm_head (norm folded in) and the embedding are stored apart
    hf_config["dtype"] = "float32"
    hf_config[CONFIG_KEY] = {**asdict(spec), "activation_block": ACT_BLOCK, "norms_folded": True}
    return write_hf_dir(out_dir, tensors, hf_config, cfg, tok_dir, metadata={"krllm_quantization": spec.format})


def read_spec(model_dir: str | Path) -> QuantSpec | None:
    """The `krllm_quantization` entry of a directory's config.json (None: not a quantized directory)."""
    from krllm.runs import read_json_object

    path = Path(model_dir) / "config.json"
    if not path.is_file():
        return None
    entry = read_json_object(path).get(CONFIG_KEY)
    if entry is None:
        return None
    if not isinstance(entry, dict) or "format" not in entry:
        raise KrllmError(f"{path}: {CONFIG_KEY} must be an object with a 'format' (int8 or int4)")
    try:
        return QuantSpec(entry["format"], int(entry.get("group_size", DEFAULT_GROUP_SIZE)),
                         entry.get("head_format"), int(entry.get("version", 1))).check()
    except (TypeError, ValueError) as e:
        raise KrllmError(f"{path}: bad {CONFIG_KEY} entry ({e})") from None


def load_quantized(model_dir: str | Path, device: str | torch.device = "cpu"):
    """A directory written by save_quantized -> krllm's Llama with quantized modules. Every tensor is
    checked against the config (a missing scale or a wrong shape is an error naming the key)."""
    from krllm.model.hf import _read_state_dict, config_from_hf_dir

    model_dir = Path(model_dir)
    spec = read_spec(model_dir)
    if spec is None:
        raise KrllmError(f"{model_dir}/config.json has no {CONFIG_KEY} entry: not a quantized directory")
    cfg = config_from_hf_dir(model_dir)
    model = _empty_quantized(cfg, spec)
    expected = model.state_dict()
    state = _read_state_dict(model_dir)
    missing = sorted(k for k in expected if k not in state and not k.startswith("model.rotary_emb"))
    if missing:
        raise KrllmError(f"{model_dir}/model.safetensors: missing {', '.join(missing[:10])}"
                         + (" ..." if len(missing) > 10 else "") + f" (a {spec.format} directory from save_quantized)")
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise KrllmError(f"{model_dir}/model.safetensors: unexpected {', '.join(unexpected[:10])}")
    for k, t in state.items():
        want = expected[k]
        if t.shape != want.shape or (t.dtype != want.dtype and not want.is_floating_point()):
            raise KrllmError(f"{model_dir}/model.safetensors: {k} is {t.dtype} {tuple(t.shape)}, "
                             f"expected {want.dtype} {tuple(want.shape)} for {spec.format}")
    state = {k: t.to(expected[k].dtype) for k, t in state.items()}
    model.load_state_dict(state, strict=False, assign=True)
    model.model.rotary_emb.reset_tables(cfg.max_position_embeddings, torch.device("cpu"))
    return model.to(device).eval()


def model_bytes(model) -> int:
    """Bytes of the unique parameters and buffers that are weights (not RoPE tables)."""
    seen, total = set(), 0
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if "rotary_emb" in name or id(t) in seen:
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
    return total


def logical_weights(model) -> int:
    """Weights held in quantized modules (buffers, so not among the parameters), one per weight."""
    return sum(m.weight_scale.shape[0] * (m.in_features if isinstance(m, QuantLinear) else m.embedding_dim)
               for m in model.modules() if isinstance(m, (QuantLinear, QuantEmbedding)))


def is_integer_dtype_name(dtype: str | None) -> bool:
    return dtype in FORMATS


__all__ = ["QuantSpec", "QuantLinear", "QuantEmbedding", "quantize_model", "save_quantized", "load_quantized",
           "read_spec", "dequantize", "quantize_int8", "quantize_int4", "quantize_activations", "model_bytes"]
