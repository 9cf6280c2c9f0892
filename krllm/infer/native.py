"""The C decode step (csrc/decode_cpu.c): compiled on first use, called through ctypes.

Decoding a small model on CPU is bound by reading the weights, but from Python every layer costs
~25 tensor-op dispatches on top; the C step does a whole token for a batch of slots in one call
and one OpenMP region (measured on the ~31M benchmark model, 2 cores: see docs/serving.md).

The library is built with the system C compiler (`$CC`, else cc/gcc/clang) for this CPU
(-march=native) and cached under krllm.runs.cache_root()/native (~/.cache/krllm/native), keyed by
the source, the compiler and the CPU, so it is built once per machine (about a second). Without a
compiler, or with KRLLM_NATIVE=0, `library()` returns None and the runner keeps its PyTorch path.

    lib = library()                          # ctypes.CDLL or None
    dec = NativeDecoder(lib, cfg, **runner.native_weights(model), cos=cos, sin=sin,   # see ModelRunner
                        k_cache=cache.k, v_cache=cache.v, max_rows=64)
    logits = dec.decode(tokens, pos, rows)
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import torch

log = logging.getLogger("krllm.infer")

SOURCE = Path(__file__).with_name("csrc") / "decode_cpu.c"
_FLAG_SETS = (  # tried in order: OpenMP threads if the compiler has them, else one thread
    ["-O3", "-march=native", "-fopenmp"],
    ["-O3", "-fopenmp"],
    ["-O3", "-march=native"],
    ["-O3"],
)


def _cache_dir() -> Path:
    from krllm.runs import cache_root

    return cache_root() / "native"


def _cpu_identity() -> str:
    """What -march=native depends on: the CPU model and feature flags (Linux), else the platform."""
    try:
        info = Path("/proc/cpuinfo").read_text()
        return "\n".join(sorted({ln for ln in info.splitlines() if ln.startswith(("model name", "flags"))}))
    except OSError:
        return platform.platform() + platform.processor()


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def _build(cc: str, out: Path, flag_sets=_FLAG_SETS) -> list[str] | None:
    """Compile SOURCE into `out` (atomically) with the first flag set that works -> the flags, or None."""
    out.parent.mkdir(parents=True, exist_ok=True)
    for flags in flag_sets:
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
        os.close(fd)
        cmd = [cc, *flags, "-std=gnu11", "-fPIC", "-shared", str(SOURCE), "-o", tmp, "-lm"]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        except (OSError, subprocess.TimeoutExpired):
            done = None
        if done is not None and done.returncode == 0:
            os.replace(tmp, out)
            return flags
        os.unlink(tmp)
    return None


@lru_cache(maxsize=1)
def library() -> ctypes.CDLL | None:
    """The compiled decode step, building it if needed; None when disabled or no compiler works."""
    if os.environ.get("KRLLM_NATIVE", "1").lower() in ("0", "false", "no", "off"):
        return None
    cc = _compiler()
    if cc is None:
        log.info("no C compiler found: decoding uses the PyTorch path")
        return None
    key = hashlib.sha256(SOURCE.read_bytes() + cc.encode() + _cpu_identity().encode()).hexdigest()[:16]
    path = _cache_dir() / f"decode_cpu-{key}.so"
    try:
        if not path.exists() and _build(cc, path) is None:
            log.warning("could not compile %s with %s: decoding uses the PyTorch path", SOURCE.name, cc)
            return None
        return open_library(path)
    except OSError as e:
        log.warning("could not load the native decode step (%s): decoding uses the PyTorch path", e)
        return None


def build_library(out: Path, flags: list[str]) -> ctypes.CDLL | None:
    """A build with these flags (e.g. without -march=native: the portable code paths), for tests."""
    cc = _compiler()
    return open_library(out) if cc is not None and _build(cc, out, [flags]) is not None else None


def open_library(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    lib.krllm_features.restype = ctypes.c_int
    lib.krllm_qpath.restype = ctypes.c_int
    lib.krllm_work_floats.restype = ctypes.c_long
    lib.krllm_work_floats.argtypes = [ctypes.POINTER(_Model), ctypes.c_int, ctypes.c_int]
    lib.krllm_decode.restype = ctypes.c_int
    lib.krllm_decode.argtypes = [ctypes.POINTER(_Model), ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                 ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
    return lib


def features() -> dict[str, bool]:
    """What the compiled step uses here: OpenMP threads, AVX-512 BF16 dot products for bf16 weights, whether
    it can keep the KV cache in fp16 (the compiler has _Float16), and which int8/int4 kernels (AVX-512
    VNNI, AVX2 or portable C)."""
    lib = library()
    bits = lib.krllm_features() if lib is not None else 0
    return {"openmp": bool(bits & 1), "avx512_bf16": bool(bits & 2), "kv_fp16": bool(bits & 4),
            "int_kernels": QPATHS[lib.krllm_qpath()] if lib is not None else None}


class _Model(ctypes.Structure):
    """Mirrors `Model` in decode_cpu.c."""

    _fields_ = [(name, ctypes.c_int) for name in (
        "n_layers", "hidden", "n_heads", "n_kv", "head_dim", "inter", "vocab", "max_seq", "cache_rows", "bf16")] + [
        ("eps", ctypes.c_float),
        ("qkv", ctypes.POINTER(ctypes.c_void_p)), ("o", ctypes.POINTER(ctypes.c_void_p)),
        ("gate_up", ctypes.POINTER(ctypes.c_void_p)), ("down", ctypes.POINTER(ctypes.c_void_p)),
        ("lm_head", ctypes.c_void_p), ("embed", ctypes.c_void_p),
        ("cos", ctypes.c_void_p), ("sin", ctypes.c_void_p),
        ("k_cache", ctypes.c_void_p), ("v_cache", ctypes.c_void_p),
        ("qkv_bias", ctypes.POINTER(ctypes.c_void_p)),  # NULL: no q/k/v biases (Llama)
        ("qtype", ctypes.c_int), ("head_qtype", ctypes.c_int), ("group_size", ctypes.c_int),
        ("qkv_s", ctypes.POINTER(ctypes.c_void_p)), ("o_s", ctypes.POINTER(ctypes.c_void_p)),
        ("gate_up_s", ctypes.POINTER(ctypes.c_void_p)), ("down_s", ctypes.POINTER(ctypes.c_void_p)),
        ("lm_head_s", ctypes.c_void_p), ("embed_s", ctypes.c_void_p),
        ("kv_f16", ctypes.c_int),
    ]


NATIVE_DTYPES = (torch.float32, torch.bfloat16)
# Quantized matrices (krllm.model.quant) by their stored dtype -> the C step's type code.
QTYPES = {torch.int8: 2, torch.uint8: 3}
QPATHS = {0: "portable C", 1: "AVX2", 2: "AVX-512 VNNI"}


class QMat(NamedTuple):
    """A quantized matrix for the C step: int8 (out, in) or packed int4 uint8 (out, in / 2), and its
    fp32 scales (out,) or (out, in / group_size); krllm.model.quant documents the formats."""

    data: torch.Tensor
    scale: torch.Tensor

    @property
    def qtype(self) -> int:
        return QTYPES[self.data.dtype]


def _check_float(layers, lm_head: torch.Tensor, embed: torch.Tensor) -> None:
    tensors = [w for ws in layers for w in ws] + [lm_head, embed]
    if any(t.dtype != embed.dtype or not t.is_contiguous() or t.device.type != "cpu" for t in tensors):
        raise ValueError("native decode needs contiguous CPU weights of one dtype")


def _check_quantized(layers, lm_head: "QMat", embed: "QMat", group_size: int) -> None:
    """int8 / int4 matrices (QMat) as krllm.model.quant stores them (rows padded to whole 32-column
    blocks), int4 groups a multiple of 32; the RMSNorm weights already folded in."""
    mats = [w for ws in layers for w in ws] + [lm_head, embed]
    qtype = layers[0][0].qtype
    if any(not isinstance(w, QMat) for w in mats) or any(w.qtype != qtype for ws in layers for w in ws):
        raise ValueError("native decode needs every layer matrix in one quantized format")
    if lm_head.qtype != embed.qtype:
        raise ValueError("native decode needs lm_head and the embedding in one quantized format")
    if any(w.data.device.type != "cpu" or not w.data.is_contiguous() or not w.scale.is_contiguous()
           or w.scale.dtype != torch.float32 for w in mats):
        raise ValueError("native decode needs contiguous CPU quantized weights with fp32 scales")
    if group_size % 32:
        raise ValueError(f"native int4 decode needs a group size in multiples of 32, not {group_size}")


class NativeDecoder:
    """Decode steps through the C library over tensors the runner owns (kept alive here).

    layers: per layer (qkv, o, gate_up, down) weights (out, in), contiguous, norm weights folded in: fp32 /
    bf16 tensors, or QMat (int8 / int4) with lm_head and embed QMat too (`group_size`: int4 columns per scale);
    cos/sin (S_max, D) fp32; k/v caches (L, R, KV, S_max, D) fp32 or fp16 (both alike); qkv_bias: None, or per layer the
    (H + 2 KV) D fp32 bias added to the qkv rows before RoPE (Qwen2).
    """

    def __init__(self, lib: ctypes.CDLL, cfg, layers: list[tuple[torch.Tensor, ...]], lm_head: torch.Tensor,
                 embed: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, k_cache: torch.Tensor,
                 v_cache: torch.Tensor, max_rows: int, qkv_bias: list[torch.Tensor] | None = None,
                 group_size: int = 32):
        quantized = isinstance(layers[0][0], QMat)
        if quantized:
            _check_quantized(layers, lm_head, embed, group_size)
            data = [tuple(w.data for w in ws) for ws in layers]
            head, emb = lm_head.data, embed.data
        else:
            _check_float(layers, lm_head, embed)
            data, head, emb = layers, lm_head, embed
        if any(t.dtype != torch.float32 or not t.is_contiguous() for t in (cos, sin)):
            raise ValueError("native decode needs contiguous fp32 rope tables")
        if k_cache.dtype not in (torch.float32, torch.float16) or v_cache.dtype != k_cache.dtype or not (
                k_cache.is_contiguous() and v_cache.is_contiguous()):
            raise ValueError("native decode needs contiguous fp32 or fp16 KV caches")
        kv_f16 = k_cache.dtype == torch.float16
        if kv_f16 and not lib.krllm_features() & 4:
            raise ValueError("this build of the C step has no fp16 KV cache (its compiler lacks _Float16)")
        n_layers, R, KV, S, D = k_cache.shape
        H, C, I = cfg.num_attention_heads, cfg.hidden_size, cfg.intermediate_size
        if qkv_bias is not None and (len(qkv_bias) != n_layers or any(
                b.dtype != torch.float32 or not b.is_contiguous() or b.shape != ((H + 2 * KV) * D,) for b in qkv_bias)):
            raise ValueError("native decode needs one contiguous fp32 q/k/v bias of (H + 2 KV) D per layer")
        self.lib = lib
        self._keep = (layers, lm_head, embed, cos, sin, k_cache, v_cache, qkv_bias)

        def ptrs(tensors):
            return (ctypes.c_void_p * n_layers)(*[t.data_ptr() for t in tensors])

        self._ptrs = [ptrs([ws[i] for ws in data]) for i in range(4)]
        self._bias_ptrs = None if qkv_bias is None else ptrs(qkv_bias)
        quant_fields = (0, 0, 0) + (None,) * 6  # zero / NULL in the struct for fp32 and bf16 weights
        if quantized:
            self._scale_ptrs = [ptrs([ws[i].scale for ws in layers]) for i in range(4)]
            quant_fields = (layers[0][0].qtype, lm_head.qtype, group_size, *self._scale_ptrs,
                            lm_head.scale.data_ptr(), embed.scale.data_ptr())
        V = head.shape[0]
        self.model = _Model(n_layers, C, H, KV, D, I, V, S, R, int(head.dtype == torch.bfloat16), cfg.rms_norm_eps,
                            *self._ptrs, head.data_ptr(), emb.data_ptr(), cos.data_ptr(), sin.data_ptr(),
                            k_cache.data_ptr(), v_cache.data_ptr(), self._bias_ptrs, *quant_fields, int(kv_f16))
        self._buffers(lib, V, max_rows)

    def _buffers(self, lib, V: int, max_rows: int) -> None:
        self.vocab_size = V
        threads = max(torch.get_num_threads(), os.cpu_count() or 1)
        self._work = torch.empty(lib.krllm_work_floats(ctypes.byref(self.model), max_rows, threads),
                                 dtype=torch.float32)
        self._logits = torch.empty(max_rows, V, dtype=torch.float32)
        self._pos = (ctypes.c_int * max_rows)()
        self._rows = (ctypes.c_int * max_rows)()
        self._want = (ctypes.c_int * max_rows)()
        self.max_rows, self.max_threads = max_rows, threads

    def decode(self, tokens: torch.Tensor, pos: list[int], rows: list[int],
               want: list[bool] | None = None) -> torch.Tensor:
        """tokens (B,) int64, positions and cache rows per row (row -1: skip) -> logits (B, V) fp32.

        Rows may share a cache row at consecutive positions (a prompt): each sees the ones before.
        want: which rows' logits to compute (default all; the others are left as they were).
        The logits live in a buffer the next call overwrites.
        """
        B = len(pos)
        if B > self.max_rows or tokens.dtype != torch.int64 or not tokens.is_contiguous():
            raise ValueError(f"native decode takes up to {self.max_rows} contiguous int64 tokens")
        for b in range(B):
            self._pos[b], self._rows[b] = pos[b], rows[b]
        if want is not None:
            for b in range(B):
                self._want[b] = int(want[b])
        threads = min(torch.get_num_threads(), self.max_threads)
        rc = self.lib.krllm_decode(ctypes.byref(self.model), B, tokens.data_ptr(), self._pos, self._rows,
                                   None if want is None else self._want, self._work.data_ptr(),
                                   self._logits.data_ptr(), threads)
        if rc == -2:
            raise MemoryError("native decode: out of memory for its work counters")
        if rc != 0:
            raise ValueError(f"native decode rejected positions {pos[:B]} / rows {rows[:B]} / tokens {tokens.tolist()}")
        return self._logits[:B]
