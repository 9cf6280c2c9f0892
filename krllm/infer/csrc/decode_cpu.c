/* One forward step of a Llama-style model on CPU, in one call: a token for each of a batch of
   KV-cache slots (decode), or the tokens of a prompt in one slot (prefill), or both.

Why C: at batch 1 a small model spends as long dispatching ~25 tensor ops per layer from Python
as it does reading its weights, and decoding is bound by how fast the weights stream from memory.
This file does the whole step (embedding, RMSNorm, q/k/v, RoPE, cache write, GQA attention,
o-proj + residual, SwiGLU MLP + residual, final norm, LM head) inside one OpenMP parallel region,
so the only per-token costs left are the weight reads. krllm.infer.native compiles it on first
use with the system C compiler; krllm.infer.runner falls back to the PyTorch path without one.

Layout (all row-major, as PyTorch stores them; the Python side checks shapes and contiguity):
  weights (out, in), fp32 or bf16 (raw uint16); RMSNorm weights are folded into the input
  columns of the matmul that reads the norm's output, so the norm here has no weight;
  qkv rows = [q heads | k heads | v heads], gate_up rows = [gate | up]; an optional fp32 q/k/v
  bias (Qwen2) per layer, NULL for Llama;
  cos/sin (S_max, D) fp32; caches (L, R, KV, S_max, D) fp32 or fp16 (kv_f16) where R = cache rows.
Activations, accumulation and attention are fp32 whatever the weights' dtype (with AVX-512 BF16,
bf16 weights multiply inputs rounded to bf16, as PyTorch's bf16 matmuls do).

A prompt's many rows are bound by arithmetic rather than by the weight reads: from GEMM_MIN_ROWS
rows on the matmuls run as a packed GEMM ("prefill GEMM"), and a prompt's rows attend in blocks
through a flash-attention kernel ("attention kernels").

Dot products keep LANES independent partial sums (a vector register's worth), written with vector
extensions rather than -ffast-math, so results do not depend on optimisation flags. */

#include <math.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
/* CPUs with AVX-512 BF16 (built with -march=native there) multiply bf16 weights by bf16 activations
   in one instruction (vdpbf16ps: 32 products summed pairwise into 16 fp32 lanes), 2-4x the rate of
   widening the weights to fp32; x is rounded to bf16 first, as PyTorch's bf16 matmuls do. */
#if defined(__AVX512BF16__) && defined(__AVX512F__)
#include <immintrin.h>
#define DPBF16 1
#else
#define DPBF16 0
#endif

/* Floats per vector: one AVX-512 register; elsewhere (AVX2, NEON, SSE) 8, so that the 16
   accumulators of a 4x4 tile stay in registers. */
#if defined(__AVX512F__)
#define LANES 16
#else
#define LANES 8
#endif
#define ROWS 4 /* output rows per block: four weight rows stream together, each x row is reused */

typedef struct {
    int n_layers, hidden, n_heads, n_kv, head_dim, inter, vocab, max_seq, cache_rows;
    int bf16; /* 1: weights are bf16 bit patterns (uint16), 0: fp32 */
    float eps;
    const void **qkv, **o, **gate_up, **down; /* per layer */
    const void *lm_head;
    const void *embed; /* (V, C) */
    const float *cos, *sin; /* (S_max, D) */
    void *k_cache, *v_cache; /* fp32, or fp16 with kv_f16 */
    const float **qkv_bias; /* per layer (H + 2 KV) D fp32, added before RoPE (Qwen2); NULL: none */
    /* quantized weights (see "int8 / int4 weights" below): 0 = none (fp32 / bf16 as `bf16` says),
       2 = int8, 3 = int4, for the layers' matrices and for lm_head + embedding; their scales */
    int qtype, head_qtype, group_size;
    const float **qkv_s, **o_s, **gate_up_s, **down_s;
    const float *lm_head_s, *embed_s;
    int kv_f16; /* 1: the KV cache holds fp16 (half the bytes each decode step reads), 0: fp32 */
} Model;


static inline float bf16_to_float(uint16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Element i of a weight matrix in either dtype (for the scalar remainders of the vector loops). */
static inline float weight_at(int bf16, const void *w, long i) {
    return bf16 ? bf16_to_float(((const uint16_t *)w)[i]) : ((const float *)w)[i];
}

/* LANES floats: GCC/clang vector extensions, lowered to whatever SIMD the target has (an AVX-512
   or AVX2 register, two NEON or SSE ones), so the same source is fast everywhere. */
typedef float vf __attribute__((vector_size(4 * LANES)));
static inline vf loadf(const float *p) {
    vf v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* fp16 cache entries (IEEE half bit patterns, uint16): converted by F16C / AVX-512 instructions where
   the CPU has them (GCC 12 turns _Float16 vector conversions into one scalar conversion per value:
   measured 2x slower decode than the fp32 cache), else through the compiler's _Float16. */
#if defined(__AVX512F__) || defined(__F16C__)
#include <immintrin.h>
#define KV_F16 1
#define F16C_OPS 1
#elif defined(__FLT16_MAX__)
#define KV_F16 1
#define F16C_OPS 0
#else
#define KV_F16 0
#define F16C_OPS 0
#endif

static inline float half_to_float(uint16_t h) {
#if F16C_OPS
    return _cvtsh_ss(h);
#elif KV_F16
    _Float16 f;
    memcpy(&f, &h, sizeof f);
    return (float)f;
#else
    (void)h;
    return 0.f; /* never called: Python refuses an fp16 cache without KV_F16 */
#endif
}

static inline uint16_t float_to_half(float x) {
#if F16C_OPS
    return (uint16_t)_cvtss_sh(x, _MM_FROUND_TO_NEAREST_INT);
#elif KV_F16
    const _Float16 f = (_Float16)x;
    uint16_t h;
    memcpy(&h, &f, sizeof h);
    return h;
#else
    (void)x;
    return 0;
#endif
}

/* LANES cache values from element i on, as fp32. */
static inline __attribute__((always_inline)) vf load_kv(const void *p, long i, int f16) {
    if (f16) {
        const uint16_t *h = (const uint16_t *)p + i;
#if F16C_OPS && LANES == 16
        return (vf)_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)h));
#elif F16C_OPS && LANES == 8
        return (vf)_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)h));
#else
        vf v;
        for (int j = 0; j < LANES; j++) v[j] = half_to_float(h[j]);
        return v;
#endif
    }
    return loadf((const float *)p + i);
}

static inline __attribute__((always_inline)) float kv_at(const void *p, long i, int f16) {
    return f16 ? half_to_float(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

/* n fp32 values into the cache at element i (fp16: rounded to nearest even). */
static inline void store_kv(void *p, long i, const float *x, int n, int f16) {
    if (!f16) {
        memcpy((float *)p + i, x, sizeof(float) * n);
        return;
    }
    uint16_t *h = (uint16_t *)p + i;
    int j = 0;
#if F16C_OPS && LANES == 16
    for (; j + 16 <= n; j += 16)
        _mm256_storeu_si256((__m256i *)(h + j), _mm512_cvtps_ph(_mm512_loadu_ps(x + j), _MM_FROUND_TO_NEAREST_INT));
#endif
    for (; j < n; j++) h[j] = float_to_half(x[j]);
}

typedef float v8 __attribute__((vector_size(32)));
typedef float v4 __attribute__((vector_size(16)));

/* Pairwise (tree) sum: a chain of scalar adds per dot product costs as much as the loads.
   Shuffles rather than memcpy through memory: an accumulator whose address is taken lives on the
   stack inside the hot loop (measured: 40% slower). */
static inline float hsum(vf v) {
#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
#if LANES == 16
    v8 a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) + __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
#else
    v8 a = v;
#endif
    v4 c = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
    return (c[0] + c[2]) + (c[1] + c[3]);
#else
    float s = 0.f;
    for (int j = 0; j < LANES; j++) s += v[j];
    return s;
#endif
}

/* bf16 weights: 2 * LANES of them are LANES uint32 words, element 2j in the low half of word j and
   2j + 1 in the high half. A shift and a mask turn one load into two fp32 vectors (even and odd
   elements) with no cross-lane shuffle, against x split the same way (`prepare_x_bf16`). */
typedef uint32_t vu __attribute__((vector_size(4 * LANES)));

static inline vu loadu(const uint16_t *p) {
    vu v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* x in the form the bf16 kernels read, for each whole block of 2 * LANES columns (the rest stay in x):
   with DPBF16, x rounded to bf16 (in xs's memory, as uint16); else split into even and odd
   elements, xs[k + j] = x[k + 2j], xs[k + LANES + j] = x[k + 2j + 1] for the block at k. */
static void prepare_x_bf16(const float *x, float *xs, long n) {
#if DPBF16
    for (long k = 0; k + 2 * LANES <= n; k += 2 * LANES)
        _mm512_storeu_si512((void *)((uint16_t *)xs + k),
                            (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + k + LANES), _mm512_loadu_ps(x + k)));
#else
    for (long k = 0; k + 2 * LANES <= n; k += 2 * LANES)
        for (int j = 0; j < LANES; j++) {
            xs[k + j] = x[k + 2 * j];
            xs[k + LANES + j] = x[k + 2 * j + 1];
        }
#endif
}

#define TILE 4 /* batch rows per tile: 4 weight rows x 4 batch rows = 16 accumulators */

/* One output: the accumulator's lanes summed, plus the columns i..n-1 past the last whole vector.
   Tiles of every size finish through here, so a row's result does not depend on its batch. */
static inline __attribute__((always_inline)) float finish_dot(int bf16, const void *wblock, long n, long i, int r,
                                                              const float *x, vf acc) {
    float s = hsum(acc);
    for (long t = i; t < n; t++)
        s += weight_at(bf16, wblock, r * n + t) * x[t];
    return s;
}

/* Reduce the accumulators of a tile and store. */
static inline __attribute__((always_inline)) void tile_store(
    int bf16, const void *wblock, long n, long i, const float *const *x, int nb, vf (*acc)[ROWS],
    float *const *y, int accumulate) {
    for (int b = 0; b < nb; b++)
        for (int r = 0; r < ROWS; r++) {
            const float s = finish_dot(bf16, wblock, n, i, r, x[b], acc[b][r]);
            y[b][r] = accumulate ? y[b][r] + s : s;
        }
}

/* While a tile computes (bound by arithmetic), fetch the next block of weight rows: the hardware
   prefetchers do not run that far ahead of a compute-bound loop, and without this the memory and
   the arithmetic of a batch step add up instead of overlapping (measured: 8 rows 2x faster). A
   prefetch past the end of the matrix is harmless. */
#define PREFETCH_NEXT_BLOCK(w)                          \
    do {                                                \
        for (int r_ = ROWS; r_ < 2 * ROWS; r_++)        \
            __builtin_prefetch((w) + r_ * n + i, 0, 3); \
    } while (0)

/* One batch row against a block of ROWS weight rows: the decode of a single sequence, bound by
   memory, so each weight vector is loaded once and used once. */
static inline __attribute__((always_inline)) void tile1(
    int bf16, const void *wblock, long n, const float *x, const float *xs, float *y, int accumulate) {
    vf a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
    long i = 0;
    if (bf16) {
        const uint16_t *w = (const uint16_t *)wblock;
#if DPBF16
        for (; i + 2 * LANES <= n; i += 2 * LANES) {
            const __m512bh xv = (__m512bh)_mm512_loadu_si512((const uint16_t *)xs + i);
            PREFETCH_NEXT_BLOCK(w);
            a0 = (vf)_mm512_dpbf16_ps((__m512)a0, (__m512bh)_mm512_loadu_si512(w + i), xv);
            a1 = (vf)_mm512_dpbf16_ps((__m512)a1, (__m512bh)_mm512_loadu_si512(w + n + i), xv);
            a2 = (vf)_mm512_dpbf16_ps((__m512)a2, (__m512bh)_mm512_loadu_si512(w + 2 * n + i), xv);
            a3 = (vf)_mm512_dpbf16_ps((__m512)a3, (__m512bh)_mm512_loadu_si512(w + 3 * n + i), xv);
        }
#else
        const vu hi = (vu){0} + 0xFFFF0000u;
        for (; i + 2 * LANES <= n; i += 2 * LANES) {
            const vf xe = loadf(xs + i), xo = loadf(xs + i + LANES);
            PREFETCH_NEXT_BLOCK(w);
            vu u0 = loadu(w + i), u1 = loadu(w + n + i), u2 = loadu(w + 2 * n + i),
                 u3 = loadu(w + 3 * n + i);
            a0 += (vf)(u0 << 16) * xe; /* separate statements: separate fused multiply-adds */
            a0 += (vf)(u0 & hi) * xo;
            a1 += (vf)(u1 << 16) * xe;
            a1 += (vf)(u1 & hi) * xo;
            a2 += (vf)(u2 << 16) * xe;
            a2 += (vf)(u2 & hi) * xo;
            a3 += (vf)(u3 << 16) * xe;
            a3 += (vf)(u3 & hi) * xo;
        }
#endif
    } else {
        const float *w = (const float *)wblock;
        for (; i + LANES <= n; i += LANES) {
            const vf xv = loadf(x + i);
            PREFETCH_NEXT_BLOCK(w);
            a0 += loadf(w + i) * xv;
            a1 += loadf(w + n + i) * xv;
            a2 += loadf(w + 2 * n + i) * xv;
            a3 += loadf(w + 3 * n + i) * xv;
        }
    }
    const float s0 = finish_dot(bf16, wblock, n, i, 0, x, a0), s1 = finish_dot(bf16, wblock, n, i, 1, x, a1);
    const float s2 = finish_dot(bf16, wblock, n, i, 2, x, a2), s3 = finish_dot(bf16, wblock, n, i, 3, x, a3);
    y[0] = accumulate ? y[0] + s0 : s0;
    y[1] = accumulate ? y[1] + s1 : s1;
    y[2] = accumulate ? y[2] + s2 : s2;
    y[3] = accumulate ? y[3] + s3 : s3;
}

/* Four batch rows against a block of ROWS weight rows, bound by arithmetic: 16 accumulators plus
   the 4 x vectors in registers, one load per weight vector. Written out by name and with PIN,
   because otherwise compilers reload both operands of every multiply-add from cache (measured:
   half the speed, bound by loads). */
/* PIN(v): the value is now in a register, as far as the compiler knows, so it cannot fold the
   load into every multiply-add that uses it (GCC otherwise reloads x for each of the 16). */
#if defined(__GNUC__) && defined(__AVX512F__)
#define PIN(v) __asm__("" : "+v"(v))
#elif defined(__GNUC__) && defined(__AVX__) /* LANES = 8 floats: one ymm register */
#define PIN(v) __asm__("" : "+x"(v))
#else
#define PIN(v) ((void)0)
#endif

#define FMA4(w, r)          \
    do {                    \
        const vf w_ = (w); \
        a0##r += w_ * x0;   \
        a1##r += w_ * x1;   \
        a2##r += w_ * x2;   \
        a3##r += w_ * x3;   \
    } while (0)

static inline __attribute__((always_inline)) void tile4(
    int bf16, const void *wblock, long n, const float *const *x, const float *const *xs, float *const *y,
    int accumulate) {
    vf a00 = {0}, a01 = {0}, a02 = {0}, a03 = {0}, a10 = {0}, a11 = {0}, a12 = {0}, a13 = {0};
    vf a20 = {0}, a21 = {0}, a22 = {0}, a23 = {0}, a30 = {0}, a31 = {0}, a32 = {0}, a33 = {0};
    long i = 0;
    if (bf16) {
        const uint16_t *w = (const uint16_t *)wblock;
#if DPBF16
#define DP4(wp, r)                                                                   \
    do {                                                                             \
        const __m512bh w_ = (__m512bh)_mm512_loadu_si512(wp);                        \
        a0##r = (vf)_mm512_dpbf16_ps((__m512)a0##r, w_, x0);                        \
        a1##r = (vf)_mm512_dpbf16_ps((__m512)a1##r, w_, x1);                        \
        a2##r = (vf)_mm512_dpbf16_ps((__m512)a2##r, w_, x2);                        \
        a3##r = (vf)_mm512_dpbf16_ps((__m512)a3##r, w_, x3);                        \
    } while (0)
        for (; i + 2 * LANES <= n; i += 2 * LANES) {
            const uint16_t *const *xb = (const uint16_t *const *)xs;
            __m512bh x0 = (__m512bh)_mm512_loadu_si512(xb[0] + i), x1 = (__m512bh)_mm512_loadu_si512(xb[1] + i);
            __m512bh x2 = (__m512bh)_mm512_loadu_si512(xb[2] + i), x3 = (__m512bh)_mm512_loadu_si512(xb[3] + i);
            PIN(x0); PIN(x1); PIN(x2); PIN(x3);
            PREFETCH_NEXT_BLOCK(w);
            DP4(w + i, 0);
            DP4(w + n + i, 1);
            DP4(w + 2 * n + i, 2);
            DP4(w + 3 * n + i, 3);
        }
#undef DP4
#else
        const vu hi = (vu){0} + 0xFFFF0000u;
        for (; i + 2 * LANES <= n; i += 2 * LANES) {
            vu u0 = loadu(w + i), u1 = loadu(w + n + i), u2 = loadu(w + 2 * n + i),
                 u3 = loadu(w + 3 * n + i);
            vf x0 = loadf(xs[0] + i), x1 = loadf(xs[1] + i), x2 = loadf(xs[2] + i), x3 = loadf(xs[3] + i);
            PIN(x0); PIN(x1); PIN(x2); PIN(x3);
            PREFETCH_NEXT_BLOCK(w);
            FMA4((vf)(u0 << 16), 0);
            FMA4((vf)(u1 << 16), 1);
            FMA4((vf)(u2 << 16), 2);
            FMA4((vf)(u3 << 16), 3);
            x0 = loadf(xs[0] + i + LANES), x1 = loadf(xs[1] + i + LANES);
            x2 = loadf(xs[2] + i + LANES), x3 = loadf(xs[3] + i + LANES);
            PIN(x0); PIN(x1); PIN(x2); PIN(x3);
            FMA4((vf)(u0 & hi), 0);
            FMA4((vf)(u1 & hi), 1);
            FMA4((vf)(u2 & hi), 2);
            FMA4((vf)(u3 & hi), 3);
        }
#endif
    } else {
        const float *w = (const float *)wblock;
        for (; i + LANES <= n; i += LANES) {
            vf x0 = loadf(x[0] + i), x1 = loadf(x[1] + i), x2 = loadf(x[2] + i), x3 = loadf(x[3] + i);
            PIN(x0); PIN(x1); PIN(x2); PIN(x3);
            PREFETCH_NEXT_BLOCK(w);
            FMA4(loadf(w + i), 0);
            FMA4(loadf(w + n + i), 1);
            FMA4(loadf(w + 2 * n + i), 2);
            FMA4(loadf(w + 3 * n + i), 3);
        }
    }
    vf acc[TILE][ROWS] = {{a00, a01, a02, a03}, {a10, a11, a12, a13}, {a20, a21, a22, a23}, {a30, a31, a32, a33}};
    tile_store(bf16, wblock, n, i, x, TILE, acc, y, accumulate);
}
#undef FMA4

static float dot1(int bf16, const void *w, long row, long n, const float *x) {
    float s = 0.f;
    for (long t = 0; t < n; t++)
        s += weight_at(bf16, w, row * n + t) * x[t];
    return s;
}

/* ---------------------------------------------------------------- int8 / int4 weights
Quantized weights (krllm.model.quant): int8 (out, in) with one fp32 scale per row, or int4 as q4_0
packs it: per run of 32 columns, 16 bytes, byte j = column j (low nibble) | column j + 16 (high
nibble), stored as q + 8 (0..15), one fp32 scale per group of group_size columns (a multiple of 32).
The input of each such matmul is first rounded to int8 in blocks of QK = 32 columns, one scale per
block (llama.cpp's q8_0, and what krllm.model.quant.QuantLinear computes), so a block's dot product
is exact integer arithmetic, scaled once: y = sum_blocks s_w * s_x * sum_j q_w q_x.

Rows are stored padded with zero columns to whole blocks (QPAD), int4 scales per group with a
narrower last group when group_size does not divide the width.
Prepared input of n columns, padded with zeros to np = QPAD(n), in the np floats of xs that the row
owns (xs rows are np apart for quantized matrices):
  int8_t xq[np]: the rounded values, in the order the weight kernels read them;
  int32_t corr[np / 4]: per 4 columns, -(weight offset) * their sum: the integer instructions take
    unsigned weights (int8 XOR 0x80 = q + 128, int4 nibbles = q + 8), so an accumulator that starts
    at corr comes out as the signed dot product;
  float sl[np / 4]: per 4 columns, the scale of their block.
QPATH (build time, like LANES): 2 = AVX-512 VNNI (vpdpbusd, 64 columns per instruction), 1 = AVX2
(vpmaddubsw + vpmaddwd, 32), 0 = portable C. With QPATH 2 an int4 pair of blocks is unpacked as
[low nibbles of both | high nibbles of both], so xq of each whole pair of blocks is stored in that
order (columns 0-15 of block 0, 0-15 of block 1, 16-31 of block 0, 16-31 of block 1). */
#define QK 32
#define QPAD(n) (((n) + QK - 1) / QK * QK) /* stored columns of a quantized row: whole blocks, zeros past n */
enum { WT_F32 = 0, WT_BF16 = 1, WT_INT8 = 2, WT_INT4 = 3 };
#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512F__)
#define QPATH 2
#elif defined(__AVX2__) && defined(__FMA__)
#define QPATH 1
#else
#define QPATH 0
#endif
#if QPATH > 0
#include <immintrin.h>
#endif

static inline int q_offset(int qt) {
#if QPATH == 2
    return qt == WT_INT8 ? 128 : 8;
#elif QPATH == 1
    return qt == WT_INT8 ? 0 : 8; /* AVX2 int8 multiplies |w| by x * sign(w): no offset */
#else
    (void)qt;
    return 0;
#endif
}

/* Where column j of block b of n columns goes in xq. */
static inline long q_pos(int qt, long b, int j, long n) {
#if QPATH == 2
    if (qt == WT_INT4 && (b | 1) < n / QK) /* a whole pair of blocks */
        return (b & ~1L) * QK + (j & 16 ? 32 : 0) + (b & 1) * 16 + (j & 15);
#else
    (void)qt, (void)n;
#endif
    return b * QK + j;
}

/* Written so that GCC/clang vectorize the block loops (division and round-to-even are exact per lane,
   so the result is the scalar one): every thread prepares its own copy of x for each matmul. */
static void prepare_q(const float *x, void *dst, long n, int qt) {
    const long np = QPAD(n);
    int8_t *xq = (int8_t *)dst;
    int32_t *corr = (int32_t *)((char *)dst + np);
    float *sl = (float *)((char *)dst + 2 * np);
    const int off = q_offset(qt);
    for (long b = 0; b < np / QK; b++) {
        const float *xb = x + b * QK;
        const int r = n - b * QK < QK ? (int)(n - b * QK) : QK; /* columns of this block (the last may be short) */
        float amax = 0.f;
        for (int j = 0; j < r; j++) {
            const float a = fabsf(xb[j]);
            amax = a > amax ? a : amax;
        }
        const float s = amax / 127.f, d = s == 0.f ? 1.f : s;
        int8_t q[QK];
        if (r == QK)
            for (int j = 0; j < QK; j++) {
                float v = nearbyintf(xb[j] / d); /* as torch.round(x / s): ties to even */
                v = v > 127.f ? 127.f : v < -127.f ? -127.f : v;
                q[j] = (int8_t)v;
            }
        else
            for (int j = 0; j < QK; j++) {
                float v = j < r ? nearbyintf(xb[j] / d) : 0.f;
                v = v > 127.f ? 127.f : v < -127.f ? -127.f : v;
                q[j] = (int8_t)v;
            }
        memcpy(xq + q_pos(qt, b, 0, np), q, 16); /* columns 0-15 and 16-31 each stay together */
        memcpy(xq + q_pos(qt, b, 16, np), q + 16, 16);
        for (int j = 0; j < QK; j += 4) sl[q_pos(qt, b, j, np) / 4] = s;
    }
    if (off != 0)
        for (long L = 0; L < np / 4; L++) corr[L] = -off * (xq[4 * L] + xq[4 * L + 1] + xq[4 * L + 2] + xq[4 * L + 3]);
}

/* Value of int4 column j of a row's packed bytes (-8..7). */
static inline int q4_at(const uint8_t *w, long j) {
    const uint8_t byte = w[(j / QK) * (QK / 2) + (j % QK) % 16];
    return (j % QK < 16 ? byte & 15 : byte >> 4) - 8;
}

/* Integer dot product of block b (natural column order in xq) with one weight row, in plain C. */
static inline int qdot_block(int qt, const void *wrow, const int8_t *xq, long b) {
    int s = 0;
    if (qt == WT_INT8) {
        const int8_t *w = (const int8_t *)wrow + b * QK;
        for (int j = 0; j < QK; j++) s += w[j] * xq[b * QK + j];
    } else {
        const uint8_t *w = (const uint8_t *)wrow + b * (QK / 2);
        for (int j = 0; j < 16; j++) s += ((w[j] & 15) - 8) * xq[b * QK + j] + ((w[j] >> 4) - 8) * xq[b * QK + 16 + j];
    }
    return s;
}

/* y[r] (+)= row r of the nr (<= ROWS) weight rows at wrows . prepared x; n: padded columns (QPAD);
   ws: the rows' scales (int8: one per row; int4: ng per row). */
static inline __attribute__((always_inline)) void qtile(int qt, const void *wrows, const float *ws, long n, long ng,
                                                        int group, const void *xp, float *y, int nr, int accumulate) {
    const int8_t *xq = (const int8_t *)xp;
    const float *sl = (const float *)((const char *)xp + 2 * n);
    const long rb = qt == WT_INT8 ? n : n / 2; /* bytes per row */
    float acc[ROWS] = {0.f, 0.f, 0.f, 0.f};
    long i = 0;
#if QPATH == 2
    {
        const int32_t *corr = (const int32_t *)((const char *)xp + n);
        __m512 a[ROWS] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
        if (qt == WT_INT8) {
            const __m512i flip = _mm512_set1_epi8((char)0x80);
            for (; i + 2 * QK <= n; i += 2 * QK) {
                const __m512i xv = _mm512_loadu_si512(xq + i), cv = _mm512_loadu_si512(corr + i / 4);
                const __m512 sv = _mm512_loadu_ps(sl + i / 4);
#pragma GCC unroll 4
                for (int r = 0; r < nr; r++) {
                    const __m512i wv = _mm512_xor_si512(_mm512_loadu_si512((const int8_t *)wrows + r * rb + i), flip);
                    a[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(cv, wv, xv)), sv, a[r]);
                }
            }
        } else {
            const __m256i low = _mm256_set1_epi8(15);
            for (; i + 2 * QK <= n; i += 2 * QK) {
                const __m512i xv = _mm512_loadu_si512(xq + i), cv = _mm512_loadu_si512(corr + i / 4);
                const __m512 sv = _mm512_loadu_ps(sl + i / 4);
                const long g0 = i / group, g1 = (i + QK) / group;
#pragma GCC unroll 4
                for (int r = 0; r < nr; r++) {
                    const __m256i p = _mm256_loadu_si256((const __m256i *)((const uint8_t *)wrows + r * rb + i / 2));
                    const __m512i wv = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_and_si256(p, low)),
                                                          _mm256_and_si256(_mm256_srli_epi16(p, 4), low), 1);
                    const __m512 s = _mm512_mask_blend_ps(0xF0F0, _mm512_set1_ps(ws[r * ng + g0]),
                                                          _mm512_set1_ps(ws[r * ng + g1]));
                    a[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(cv, wv, xv)), _mm512_mul_ps(sv, s), a[r]);
                }
            }
        }
        for (int r = 0; r < nr; r++) acc[r] = _mm512_reduce_add_ps(a[r]);
    }
#elif QPATH == 1
    {
        const int32_t *corr = (const int32_t *)((const char *)xp + n);
        const __m256i ones = _mm256_set1_epi16(1);
        __m256 a[ROWS] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
        if (qt == WT_INT8) {
            for (; i + QK <= n; i += QK) {
                const __m256i xv = _mm256_loadu_si256((const __m256i *)(xq + i));
                const __m256 sv = _mm256_loadu_ps(sl + i / 4);
#pragma GCC unroll 4
                for (int r = 0; r < nr; r++) {
                    const __m256i w = _mm256_loadu_si256((const __m256i *)((const int8_t *)wrows + r * rb + i));
                    const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(xv, w)), ones);
                    a[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), sv, a[r]);
                }
            }
        } else {
            const __m128i low = _mm_set1_epi8(15);
            for (; i + QK <= n; i += QK) {
                const __m256i xv = _mm256_loadu_si256((const __m256i *)(xq + i));
                const __m256i cv = _mm256_loadu_si256((const __m256i *)(corr + i / 4));
                const __m256 sv = _mm256_loadu_ps(sl + i / 4);
                const long g = i / group;
#pragma GCC unroll 4
                for (int r = 0; r < nr; r++) {
                    const __m128i p = _mm_loadu_si128((const __m128i *)((const uint8_t *)wrows + r * rb + i / 2));
                    const __m256i wv = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(p, 4), low), _mm_and_si128(p, low));
                    const __m256i d = _mm256_add_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(wv, xv), ones), cv);
                    a[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), _mm256_mul_ps(sv, _mm256_set1_ps(ws[r * ng + g])), a[r]);
                }
            }
        }
        for (int r = 0; r < nr; r++) {
            __m128 h = _mm_add_ps(_mm256_castps256_ps128(a[r]), _mm256_extractf128_ps(a[r], 1));
            h = _mm_add_ps(h, _mm_movehl_ps(h, h));
            h = _mm_add_ss(h, _mm_movehdup_ps(h));
            acc[r] = _mm_cvtss_f32(h);
        }
    }
#endif
    for (; i < n; i += QK) /* portable, and the last odd block of the VNNI path (natural order) */
        for (int r = 0; r < nr; r++) {
            const float s = qt == WT_INT8 ? sl[i / 4] : sl[i / 4] * ws[r * ng + i / group];
            acc[r] += (float)qdot_block(qt, (const char *)wrows + r * rb, xq, i / QK) * s;
        }
    for (int r = 0; r < nr; r++) {
        const float v = qt == WT_INT8 ? acc[r] * ws[r] : acc[r];
        y[r] = accumulate ? y[r] + v : v;
    }
}

/* Output rows [row0, row1) of Y[b] (+)= W @ X[b] for quantized W, as matmul_rows; Xs holds X prepared
   by prepare_q (each batch row's n_in floats). */
static void matmul_rows_q(int qt, int group, const void *w, const float *ws, long n_in, const float *Xs,
                          const int *idx, int n_live, long row0, long row1, float *Y, long y_stride, long out0,
                          int accumulate) {
    const long np = QPAD(n_in), rb = qt == WT_INT8 ? np : np / 2, ng = qt == WT_INT8 ? 1 : (n_in + group - 1) / group;
    long o = row0;
    for (; o + ROWS <= row1; o += ROWS)
        for (int k = 0; k < n_live; k++)
            qtile(qt, (const char *)w + o * rb, ws + o * ng, np, ng, group, Xs + idx[k] * np,
                  Y + idx[k] * y_stride + o - out0, ROWS, accumulate);
    for (; o < row1; o++)
        for (int k = 0; k < n_live; k++)
            qtile(qt, (const char *)w + o * rb, ws + o * ng, np, ng, group, Xs + idx[k] * np,
                  Y + idx[k] * y_stride + o - out0, 1, accumulate);
}

/* Output rows [row0, row1) of Y[b] (+)= W @ X[b] for the n_live batch rows in `idx`; W (n_out, n_in).
   Row o of batch row b goes to Y[b * y_stride + o - out0]. Xs holds X prepared for bf16 weights. */
static void matmul_rows(const Model *m, const void *w, long n_in, const float *X, const float *Xs,
                        const int *idx, int n_live, long row0, long row1, float *Y, long y_stride, long out0,
                        int accumulate) {
    const int bf16 = m->bf16;
    const long esize = bf16 ? 2 : 4;
    long o = row0;
    if (n_live == 1) { /* one sequence: the hot path of chat, kept free of batch bookkeeping */
        const float *x = X + idx[0] * n_in, *xs = Xs + idx[0] * n_in;
        float *y = Y + idx[0] * y_stride - out0;
        if (bf16)
            for (; o + ROWS <= row1; o += ROWS) tile1(1, (const char *)w + o * n_in * 2, n_in, x, xs, y + o, accumulate);
        else
            for (; o + ROWS <= row1; o += ROWS) tile1(0, (const char *)w + o * n_in * 4, n_in, x, xs, y + o, accumulate);
    }
    for (; o + ROWS <= row1; o += ROWS) {
        const void *wb = (const char *)w + o * n_in * esize;
        int k = 0;
        for (; k + TILE <= n_live; k += TILE) {
            const float *x[TILE], *xs[TILE];
            float *y[TILE];
            for (int b = 0; b < TILE; b++)
                x[b] = X + idx[k + b] * n_in, xs[b] = Xs + idx[k + b] * n_in, y[b] = Y + idx[k + b] * y_stride + o - out0;
            if (bf16) tile4(1, wb, n_in, x, xs, y, accumulate);
            else tile4(0, wb, n_in, x, xs, y, accumulate);
        }
        for (; k < n_live; k++) {
            const float *x = X + idx[k] * n_in, *xs = Xs + idx[k] * n_in;
            float *y = Y + idx[k] * y_stride + o - out0;
            if (bf16) tile1(1, wb, n_in, x, xs, y, accumulate);
            else tile1(0, wb, n_in, x, xs, y, accumulate);
        }
    }
    for (; o < row1; o++) /* rows past the last whole block */
        for (int k = 0; k < n_live; k++) {
            float v = dot1(bf16, w, o, n_in, X + idx[k] * n_in), *y = Y + idx[k] * y_stride + o - out0;
            *y = accumulate ? *y + v : v;
        }
}

/* ---------------------------------------------------------------- prefill GEMM
Many rows at once (a prompt, or a chunk of one) are bound by arithmetic, not by reading the weights,
and the kernels above spend a horizontal sum per output there. From GEMM_MIN_ROWS rows on, fp32 and
bf16 matmuls take the BLAS layout instead: the rows' inputs packed once per phase, MR rows interleaved
(xp[block][k][MR]), and each panel of NR weight rows packed transposed (p[k][NR], bf16 widened to
fp32) into a buffer of the thread's; the kernel then keeps an MR x NR tile of outputs in registers
and adds one broadcast input times one weight vector per multiply-add, with no sums across lanes.
The products are the same as the row kernels'; the order of the additions differs (by k, not in
LANES partial sums), which moves results by rounding only. */
#define GEMM_MIN_ROWS 48
#define NR (2 * LANES) /* weight rows per panel: two vectors */
#if LANES == 16
#define MR 12 /* 24 accumulators + 2 weight vectors + a broadcast: 27 of AVX-512's 32 registers */
#else
#define MR 6 /* 12 + 3 of AVX2's 16 */
#endif

/* The live rows of a step, split by which matmul kernels they take: a prompt's rows (runs of one slot
   at consecutive positions) through the GEMM when there are GEMM_MIN_ROWS of them, every other row
   (decode rows, short prompts) through the row kernels. A decode row's arithmetic, and so its
   logits, are then the same whatever shares its step: alone, in any batch, or beside a prompt's chunk. */
typedef struct {
    const int *all, *gemm, *rest;
    int n_all, n_gemm, n_rest;
} Rows;

/* A 16 x 16 tile transposed in registers (r[i][j] -> r[j][i]): four rounds, each swapping the
   off-diagonal blocks of size 8, 4, 2, 1 with two-source shuffles; 64 shuffles for 256 floats, where
   scalar copies into a transposed layout cost a store each (measured: packing took longer than the
   multiply-adds it feeds at 128 rows). */
#if (defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)) && LANES == 16
#define TRANSPOSE16 1
#define TR_LO8 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23
#define TR_HI8 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31
#define TR_LO4 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27
#define TR_HI4 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31
#define TR_LO2 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29
#define TR_HI2 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31
#define TR_LO1 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30
#define TR_HI1 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31
#define TR_ROUND(S)                                                                  \
    for (int i = 0; i < 16; i++)                                                     \
        if (!(i & S)) {                                                              \
            const vf a_ = r[i], b_ = r[i + S];                                       \
            r[i] = __builtin_shufflevector(a_, b_, TR_LO##S);                        \
            r[i + S] = __builtin_shufflevector(a_, b_, TR_HI##S);                    \
        }
static inline __attribute__((always_inline)) void transpose16(vf *r) {
    TR_ROUND(8)
    TR_ROUND(4)
    TR_ROUND(2)
    TR_ROUND(1)
}
#else
#define TRANSPOSE16 0
#endif

/* 16 floats of row `row` from column k of a matrix of n columns, fp32 or bf16. */
static inline vf load_row16(int bf16, const void *w, long row, long n, long k) {
    if (!bf16) return loadf((const float *)w + row * n + k);
    vf v;
    for (int j = 0; j < LANES; j++) v[j] = weight_at(1, w, row * n + k + j);
    return v;
}

/* The live rows of X (n columns each), MR at a time, column-interleaved: xp[blk * MR * n + k * MR + i];
   the rows past n_live in the last block are zeros. */
static void pack_x(const float *X, long n, const int *idx, int n_live, float *xp) {
    for (int b0 = 0; b0 < n_live; b0 += MR) {
        float *blk = xp + (long)b0 * n;
        const int nb = n_live - b0 < MR ? n_live - b0 : MR;
        long k = 0;
#if TRANSPOSE16
        for (; k + 16 <= n; k += 16) {
            vf r[16];
            for (int i = 0; i < 16; i++) r[i] = i < nb ? loadf(X + (long)idx[b0 + i] * n + k) : (vf){0};
            transpose16(r);
            for (int j = 0; j < 16; j++) memcpy(blk + (k + j) * MR, &r[j], sizeof(float) * MR);
        }
#endif
        for (int i = 0; i < MR; i++) {
            const float *x = i < nb ? X + (long)idx[b0 + i] * n : NULL;
            for (long kk = k; kk < n; kk++) blk[kk * MR + i] = x != NULL ? x[kk] : 0.f;
        }
    }
}

/* Weight rows [o, o + nr) of W (rows of n columns) as p[k * NR + r], fp32, the columns past nr zero. */
static void pack_w(int bf16, const void *w, long n, long o, int nr, float *p) {
    long k = 0;
#if TRANSPOSE16
    for (; k + 16 <= n; k += 16)
        for (int r0 = 0; r0 < NR; r0 += 16) {
            vf r[16];
            for (int i = 0; i < 16; i++) r[i] = r0 + i < nr ? load_row16(bf16, w, o + r0 + i, n, k) : (vf){0};
            transpose16(r);
            for (int j = 0; j < 16; j++) memcpy(p + (k + j) * NR + r0, &r[j], sizeof(vf));
        }
#endif
    for (int r = 0; r < NR; r++)
        for (long kk = k; kk < n; kk++) p[kk * NR + r] = r >= nr ? 0.f : weight_at(bf16, w, (o + r) * n + kk);
}

/* One MR x NR tile: rows b0.. of the packed inputs against a packed panel; stores the nb valid rows'
   nr valid columns at Y + idx[b] * y_stride + col. The accumulators are named, not an array, so that
   they stay in registers (an array of them went through memory: measured 3x slower). */
#define GEMM_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5) GEMM_ROWS_HI(X)
#if MR == 12
#define GEMM_ROWS_HI(X) X(6) X(7) X(8) X(9) X(10) X(11)
#else
#define GEMM_ROWS_HI(X)
#endif
#define GEMM_DECLARE(i) vf c##i##_0 = {0}, c##i##_1 = {0};
#define GEMM_FMA(i) c##i##_0 += a[i] * b0, c##i##_1 += a[i] * b1; /* scalar * vector: one broadcast load */
#define GEMM_SAVE(i) memcpy(t + (i) * NR, &c##i##_0, sizeof(vf)), memcpy(t + (i) * NR + LANES, &c##i##_1, sizeof(vf));

static inline __attribute__((always_inline)) void gemm_tile(const float *p, const float *xp, long n, const int *idx,
                                                            int nb, int nr, float *Y, long y_stride, long col,
                                                            int accumulate) {
    GEMM_ROWS(GEMM_DECLARE)
    for (long k = 0; k < n; k++) {
        const vf b0 = loadf(p + k * NR), b1 = loadf(p + k * NR + LANES);
        const float *a = xp + k * MR;
        GEMM_ROWS(GEMM_FMA)
    }
    float t[MR * NR];
    GEMM_ROWS(GEMM_SAVE)
    for (int i = 0; i < nb; i++) {
        float *y = Y + (long)idx[i] * y_stride + col;
        const float *ti = t + i * NR;
        if (accumulate)
            for (int r = 0; r < nr; r++) y[r] += ti[r];
        else
            memcpy(y, ti, sizeof(float) * nr);
    }
}

/* Output rows [row0, row1) of Y[b] (+)= W @ X[b] for every live row, X packed by pack_x into xp;
   pack: the thread's NR * n floats for a weight panel. */
static void gemm_rows(int bf16, const void *w, long n, const float *xp, const int *idx, int n_live, long row0,
                      long row1, float *Y, long y_stride, long out0, int accumulate, float *pack) {
    for (long o = row0; o < row1; o += NR) {
        const int nr = row1 - o < NR ? (int)(row1 - o) : NR;
        pack_w(bf16, w, n, o, nr, pack);
        for (int b0 = 0; b0 < n_live; b0 += MR)
            gemm_tile(pack, xp + (long)b0 * n, n, idx + b0, n_live - b0 < MR ? n_live - b0 : MR, nr, Y, y_stride,
                      o - out0, accumulate);
    }
}

/* A weight matrix as the step reads it: its data, its scales (quantized types) and its type. */
typedef struct {
    const void *w;
    const float *s;
    int type; /* WT_* */
} Mat;

static inline int layer_type(const Model *m) { return m->qtype ? m->qtype : m->bf16 ? WT_BF16 : WT_F32; }
static inline int head_type(const Model *m) { return m->head_qtype ? m->head_qtype : layer_type(m); }
static inline Mat layer_mat(const Model *m, const void *const *w, const float *const *s, int l) {
    return (Mat){w[l], s != NULL ? s[l] : NULL, layer_type(m)};
}

/* Xs, Xp: X as prepare_rows left it for this matrix type (the rest rows prepared, the gemm rows packed);
   pack: the thread's gemm_rows panel. */
static void matmul_any(const Model *m, Mat w, long n_in, const float *X, const float *Xs, const float *Xp,
                       const Rows *r, long row0, long row1, float *Y, long y_stride, long out0, int accumulate,
                       float *pack) {
    if (r->n_gemm)
        gemm_rows(w.type == WT_BF16, w.w, n_in, Xp, r->gemm, r->n_gemm, row0, row1, Y, y_stride, out0, accumulate, pack);
    if (r->n_rest == 0) return;
    if (w.type >= WT_INT8)
        matmul_rows_q(w.type, m->group_size, w.w, w.s, n_in, Xs, r->rest, r->n_rest, row0, row1, Y, y_stride, out0,
                      accumulate);
    else
        matmul_rows(m, w.w, n_in, X, Xs, r->rest, r->n_rest, row0, row1, Y, y_stride, out0, accumulate);
}

/* Output rows per work item: about 32 KB of weights, a whole number of ROWS blocks, at most CHUNK_MAX. */
#define CHUNK_MAX 128
static inline int weight_bits(int wt) { return wt == WT_F32 ? 32 : wt == WT_BF16 ? 16 : wt == WT_INT8 ? 8 : 4; }
static long chunk_rows(long n_in, int wt) {
    long rows = 32768L * 8 / (n_in * weight_bits(wt)) / ROWS * ROWS;
    return rows < ROWS ? ROWS : rows > CHUNK_MAX ? CHUNK_MAX : rows;
}

/* Work sharing without thread barriers. Each phase of the step (a matmul, the attention) is cut
   into work items; a thread moves on to the next phase once every item of this one is done,
   whoever did it. Items are split into one contiguous range per thread, claimed in order through
   that range's atomic counter (so each thread streams its share of the weights front to back, as
   a static split would), and a thread that runs out of its own items takes the rest of the others'.
   A thread that the OS takes off its core for a while (the HTTP server's threads share the cores)
   therefore holds nobody up. With OpenMP barriers instead, every phase waited for every thread,
   and a server's 1-row decode step ran 3-4x slower than alone (measured). */
typedef struct {
    atomic_int v;
    char pad[64 - sizeof(atomic_int)]; /* one counter per cache line: no false sharing */
} Counter;

typedef struct {
    Counter *next, *done; /* per thread: items claimed from its range; items it finished */
    int n_threads, me;
} Phase;

/* Phase p of a step, as seen by thread `me`: 2 * n_threads counters per phase in `all`. */
static Phase phase_at(Counter *all, int p, int n_threads, int me) {
    Counter *c = all + 2L * p * n_threads;
    return (Phase){c, c + n_threads, n_threads, me};
}

/* The next item for thread `me`: its own range first, then the others' -> item index, or -1. */
static inline int claim(Phase *ph, int n_items) {
    for (int k = 0; k < ph->n_threads; k++) {
        const int r = (ph->me + k) % ph->n_threads;
        const int lo = (int)((long)n_items * r / ph->n_threads), hi = (int)((long)n_items * (r + 1) / ph->n_threads);
        if (lo >= hi || atomic_load_explicit(&ph->next[r].v, memory_order_relaxed) >= hi - lo) continue;
        const int c = lo + atomic_fetch_add_explicit(&ph->next[r].v, 1, memory_order_relaxed);
        if (c < hi) return c;
    }
    return -1;
}

/* Each thread counts its own finished items: one shared counter bounced between the cores' caches
   cost 20% of the step's speed (measured). */
static inline void finish(Phase *ph) {
    atomic_store_explicit(&ph->done[ph->me].v, atomic_load_explicit(&ph->done[ph->me].v, memory_order_relaxed) + 1,
                          memory_order_release);
}

static int n_done(Phase *ph) {
    int n = 0;
    for (int t = 0; t < ph->n_threads; t++) n += atomic_load_explicit(&ph->done[t].v, memory_order_acquire);
    return n;
}

static void wait_done(Phase *ph, int n_items) {
    for (long spins = 0; n_done(ph) < n_items; spins++) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
        if (spins > 2000) sched_yield(); /* the thread we wait for may need this core */
    }
}

/* Every item of a matmul phase: output rows in chunks, for all live batch rows. */
static void matmul_phase(Phase *ph, const Model *m, Mat w, long n_in, const float *X, const float *Xs, const float *Xp,
                         const Rows *r, long n_out, float *Y, int accumulate, float *pack) {
    const long rows = r->n_gemm ? 2 * NR : chunk_rows(n_in, w.type);
    const int n_items = (int)((n_out + rows - 1) / rows);
    for (int c; (c = claim(ph, n_items)) >= 0; finish(ph)) {
        const long r0 = c * rows, r1 = r0 + rows < n_out ? r0 + rows : n_out;
        matmul_any(m, w, n_in, X, Xs, Xp, r, r0, r1, Y, n_out, 0, accumulate, pack);
    }
    wait_done(ph, n_items);
}

/* h[b] = x[b] / sqrt(mean(x[b]^2) + eps) for the listed rows (the norm's weight is folded into the
   next matmul), and h prepared for bf16 weights. Every thread computes its own copy: cheaper than
   making the others wait for one. */
/* x prepared for weights of type wt: bf16 (prepare_x_bf16) or quantized (prepare_q). */
static inline void prepare_for(int wt, const float *x, float *xs, long n) {
    if (wt == WT_BF16) prepare_x_bf16(x, xs, n);
    else if (wt >= WT_INT8) prepare_q(x, xs, n, wt);
}

/* Floats between batch rows of prepared inputs of n columns (quantized rows are padded to whole blocks). */
static inline long xs_stride(int wt, long n) { return wt >= WT_INT8 ? QPAD(n) : n; }

/* X's rows as the matmul kernels read them: the rest rows prepared for wt into Xs, the gemm rows packed
   into Xp. */
static void prepare_rows(int wt, const float *X, float *Xs, float *Xp, long n, const Rows *r) {
    for (int k = 0; k < r->n_rest; k++)
        prepare_for(wt, X + r->rest[k] * n, Xs + r->rest[k] * xs_stride(wt, n), n);
    if (r->n_gemm) pack_x(X, n, r->gemm, r->n_gemm, Xp);
}

static void rms_norm_rows(const Model *m, int wt, const float *x, float *h, float *hs, float *hp, const Rows *r) {
    const int C = m->hidden;
    for (int k = 0; k < r->n_all; k++) {
        const float *xb = x + (long)r->all[k] * C;
        float *hb = h + (long)r->all[k] * C;
        float ss = 0.f;
        for (int i = 0; i < C; i++) ss += xb[i] * xb[i];
        const float s = 1.f / sqrtf(ss / C + m->eps);
        for (int i = 0; i < C; i++) hb[i] = xb[i] * s;
    }
    prepare_rows(wt, h, hs, hp, C, r);
}

/* transformers' rotate_half pairing: element i turns with element i + D/2. */
static void rope(float *v, const float *cos, const float *sin, int D) {
    int half = D / 2;
    for (int i = 0; i < half; i++) {
        float a = v[i], c = v[i + half];
        v[i] = a * cos[i] - c * sin[i];
        v[i + half] = c * cos[i + half] + a * sin[i + half];
    }
}

/* Causal attention of one row's G query heads (sharing one KV head) over its n_pos cached positions. */
static inline __attribute__((always_inline)) void attend_group(const float *q, const void *k, const void *v, int G,
                                                               int D, int n_pos, float *scores, float *y, int f16) {
    float scale = 1.f / sqrtf((float)D);
    for (int h = 0; h < G; h++) {
        const float *qh = q + (long)h * D;
        float mx = -INFINITY;
        for (int t = 0; t < n_pos; t++) {
            float s = 0.f;
            for (int i = 0; i < D; i++) s += qh[i] * kv_at(k, (long)t * D + i, f16);
            scores[t] = s * scale;
            if (scores[t] > mx) mx = scores[t];
        }
        float sum = 0.f;
        for (int t = 0; t < n_pos; t++) {
            scores[t] = expf(scores[t] - mx);
            sum += scores[t];
        }
        float *yh = y + (long)h * D;
        for (int i = 0; i < D; i++) yh[i] = 0.f;
        for (int t = 0; t < n_pos; t++) {
            const float p = scores[t] / sum;
            for (int i = 0; i < D; i++) yh[i] += p * kv_at(v, (long)t * D + i, f16);
        }
    }
}

/* ---------------------------------------------------------------- attention kernels
Vectorised attention for head_dim a multiple of LANES (attend_group above is the general fallback).
Neither materialises a score matrix per head: a decode row keeps one score per cached position, a
prompt's block of rows one LANES-key tile at a time.

- attend_decode: one row's G heads (one KV head) over its n_pos keys, each key and value read once
  for all G heads. Scores by dot products, LANES keys at a time, their partial sums reduced across
  lanes together (reduce_lanes: a transpose-add tree, not LANES horizontal sums); softmax with a
  vector exp; then the values weighted, G heads per value read.
- attend_flash: nq consecutive rows of one slot (a prompt's chunk) x G heads, online softmax over
  tiles of LANES keys (flash attention): each tile's keys are transposed once into kt[d][j] and every
  query-head of the block scores the whole tile with one broadcast multiply-add per dimension; the
  running max, sum and output of each query-head live in the thread's scratch. */

/* exp(x) for a vector, to ~1 ulp (Cephes' expf polynomial); x below -87.3 gives ~0, not 0. */
typedef int32_t vi __attribute__((vector_size(4 * LANES)));
static inline vf vexp(vf x) {
    const vf hi = (vf){0} + 88.3762626647949f, lo = (vf){0} - 87.3365447504f;
    x = (vf)(((vi)x & (vi)(x < hi)) | ((vi)hi & ~(vi)(x < hi)));
    x = (vf)(((vi)x & (vi)(x > lo)) | ((vi)lo & ~(vi)(x > lo)));
    const vf magic = (vf){0} + 12582912.f; /* 1.5 * 2^23: adding it rounds to an integer */
    const vf n = (x * 1.44269504088896341f + magic) - magic;
    vf r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    vf y = (vf){0} + 1.9875691500E-4f;
    y = y * r + 1.3981999507E-3f;
    y = y * r + 8.3334519073E-3f;
    y = y * r + 4.1665795894E-2f;
    y = y * r + 1.6666665459E-1f;
    y = y * r + 5.0000001201E-1f;
    y = y * (r * r) + r + 1.f;
    const vi e = (__builtin_convertvector(n, vi) + 127) << 23;
    return y * (vf)e;
}

static inline vf vmax(vf a, vf b) { return (vf)(((vi)a & (vi)(a > b)) | ((vi)b & ~(vi)(a > b))); }

/* Largest lane: a shuffle tree, as hsum (a scalar loop over the lanes cost as much as the exp). */
typedef int32_t vi8 __attribute__((vector_size(32)));
typedef int32_t vi4 __attribute__((vector_size(16)));
static inline float hmax(vf v) {
#if (defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)) && LANES == 16
    const v8 a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7), b = __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
    const v8 m8 = (v8)(((vi8)a & (a > b)) | ((vi8)b & ~(a > b)));
    const v4 c = __builtin_shufflevector(m8, m8, 0, 1, 2, 3), d = __builtin_shufflevector(m8, m8, 4, 5, 6, 7);
    const v4 m4 = (v4)(((vi4)c & (c > d)) | ((vi4)d & ~(c > d)));
    const float x = m4[0] > m4[1] ? m4[0] : m4[1], y = m4[2] > m4[3] ? m4[2] : m4[3];
    return x > y ? x : y;
#else
    float mx = v[0];
    for (int j = 1; j < LANES; j++) mx = v[j] > mx ? v[j] : mx;
    return mx;
#endif
}

/* out[j] = sum of the lanes of part[j], for j < LANES. */
static inline vf reduce_lanes(const vf *part) {
#if (defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)) && LANES == 16
    vf a[8], b[4], c[2];
    for (int i = 0; i < 8; i++)
        a[i] = __builtin_shufflevector(part[2 * i], part[2 * i + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
               __builtin_shufflevector(part[2 * i], part[2 * i + 1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
    for (int i = 0; i < 4; i++)
        b[i] = __builtin_shufflevector(a[2 * i], a[2 * i + 1], 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) +
               __builtin_shufflevector(a[2 * i], a[2 * i + 1], 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
    for (int i = 0; i < 2; i++)
        c[i] = __builtin_shufflevector(b[2 * i], b[2 * i + 1], 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29) +
               __builtin_shufflevector(b[2 * i], b[2 * i + 1], 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31);
    return __builtin_shufflevector(c[0], c[1], 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30) +
           __builtin_shufflevector(c[0], c[1], 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
#else
    vf out;
    for (int j = 0; j < LANES; j++) out[j] = hsum(part[j]);
    return out;
#endif
}

/* Lanes j with first + j > last set to -inf (keys after the query's position). */
static inline vf mask_after(vf s, int first, int last) {
    vi lane;
    for (int j = 0; j < LANES; j++) lane[j] = first + j;
    const vi keep = lane <= ((vi){0} + last);
    return (vf)(((vi)s & keep) | ((vi)((vf){0} - INFINITY) & ~keep));
}

/* q: G heads (D each, D % LANES == 0) of one row; k, v: its KV head's cache (n_pos x D);
   scores: G * QPAD(n_pos) floats of scratch; y: the G heads' outputs. */
static inline __attribute__((always_inline)) void attend_decode(const float *q, const void *k, const void *v, int G,
                                                                int D, int n_pos, float *scores, float *y, int f16) {
    const float scale = 1.f / sqrtf((float)D);
    const int stride = (n_pos + LANES - 1) / LANES * LANES, nd = D / LANES;
    for (int t0 = 0; t0 < n_pos; t0 += LANES) {
        const int nk = n_pos - t0 < LANES ? n_pos - t0 : LANES;
        for (int h = 0; h < G; h++) {
            const float *qh = q + (long)h * D;
            vf part[LANES];
            for (int j = 0; j < LANES; j++) {
                const long kt = (long)(t0 + (j < nk ? j : 0)) * D;
                vf a = {0};
                for (int dv = 0; dv < nd; dv++) a += loadf(qh + dv * LANES) * load_kv(k, kt + dv * LANES, f16);
                part[j] = a;
            }
            const vf sc = mask_after(reduce_lanes(part) * scale, t0, n_pos - 1);
            memcpy(scores + (long)h * stride + t0, &sc, sizeof sc);
        }
    }
    for (int h = 0; h < G; h++) {
        float *sh = scores + (long)h * stride;
        vf mx = loadf(sh);
        for (int t = LANES; t < stride; t += LANES) {
            mx = vmax(mx, loadf(sh + t));
        }
        const float m = hmax(mx);
        vf sum = {0};
        for (int t = 0; t < stride; t += LANES) {
            const vf p = vexp(loadf(sh + t) - m);
            const vf pz = (vf)((vi)p & (vi)(loadf(sh + t) > (vf){0} - INFINITY)); /* masked keys: exactly 0 */
            sum += pz;
            memcpy(sh + t, &pz, sizeof pz);
        }
        const float inv = 1.f / hsum(sum);
        for (int t = 0; t < n_pos; t++) sh[t] *= inv;
    }
    for (int dv = 0; dv < nd; dv++)
        for (int h0 = 0; h0 < G; h0 += 4) { /* four heads' outputs in registers per value read */
            const int nh = G - h0 < 4 ? G - h0 : 4;
            const float *p0 = scores + (long)h0 * stride, *p1 = p0 + (nh > 1) * stride, *p2 = p0 + (nh > 2) * 2 * stride,
                        *p3 = p0 + (nh > 3) * 3 * stride;
            vf o0 = {0}, o1 = {0}, o2 = {0}, o3 = {0};
            for (int t = 0; t < n_pos; t++) {
                const vf vt = load_kv(v, (long)t * D + dv * LANES, f16);
                o0 += p0[t] * vt;
                o1 += p1[t] * vt;
                o2 += p2[t] * vt;
                o3 += p3[t] * vt;
            }
            const vf o[4] = {o0, o1, o2, o3};
            for (int h = 0; h < nh; h++) memcpy(y + (long)(h0 + h) * D + dv * LANES, &o[h], sizeof o0);
        }
}

/* Query-heads of a flash block: query row i / G of the block, head i % G. */
#define FLASH_ROWS 64 /* prompt rows per attention work item */

/* Query-heads scored together against a key tile: 8 accumulator chains, enough to hide the latency
   of the multiply-adds (with 4 they waited on each other: measured 1.6x slower). */
#define QH 8
#define QH_EACH(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)

/* rows of the block: q[i] = the row's G heads (QKV floats apart), y[i] = its outputs (H * D apart);
   positions p0 .. p0 + nq - 1; k, v: the slot's KV head's cache; scratch: attend_flash_floats. */
static inline __attribute__((always_inline)) void attend_flash(const float *q, long q_stride, int nq, int p0, int G,
                                                               int D, const void *k, const void *v, float *y,
                                                               long y_stride, float *scratch, int f16) {
    const float scale = 1.f / sqrtf((float)D);
    const int nqh = nq * G, nd = D / LANES, n_keys = p0 + nq;
    const int nqp = (nqh + QH - 1) / QH * QH; /* query-heads rounded up to whole groups */
    float *o = scratch, *mrow = o + (long)nqp * D, *lrow = mrow + nqp, *kt = lrow + nqp, *pt = kt + (long)D * LANES;
    float *qp = pt + (long)QH * LANES;
    for (int i = 0; i < nqp; i++) mrow[i] = -INFINITY, lrow[i] = 0.f;
    memset(o, 0, sizeof(float) * nqp * D);
    /* the queries, scaled by 1/sqrt(D), interleaved by groups of QH: qp[g * QH * D + d * QH + i] */
    for (int ii = 0; ii < nqp; ii++) {
        const int src_i = ii < nqh ? ii : 0;
        const float *src = q + (long)(src_i / G) * q_stride + (long)(src_i % G) * D;
        float *dst = qp + (long)(ii / QH) * QH * D + ii % QH;
        for (int d = 0; d < D; d++) dst[d * QH] = src[d] * scale;
    }
    for (int t0 = 0; t0 < n_keys; t0 += LANES) {
        const int nk = n_keys - t0 < LANES ? n_keys - t0 : LANES;
        /* the tile's keys transposed: kt[d * LANES + j] = key t0 + j, dimension d */
#if TRANSPOSE16
        if (nk == LANES)
            for (int d0 = 0; d0 < D; d0 += 16) {
                vf r[16];
                for (int j = 0; j < 16; j++) r[j] = load_kv(k, (long)(t0 + j) * D + d0, f16);
                transpose16(r);
                memcpy(kt + (long)d0 * LANES, r, sizeof r);
            }
        else
#endif
            for (int j = 0; j < LANES; j++)
                for (int d = 0; d < D; d++) kt[d * LANES + j] = j < nk ? kv_at(k, (long)(t0 + j) * D + d, f16) : 0.f;
        const int first = t0 > p0 ? (t0 - p0) * G / QH * QH : 0; /* from the group of the first row that sees the tile */
        for (int i0 = first; i0 < nqh; i0 += QH) {
            const int ni = nqh - i0 < QH ? nqh - i0 : QH;
            const float *qg = qp + (long)i0 * D; /* qg[d * QH + i]: query-head i0 + i */
#define FLASH_S_DECLARE(i) vf s##i = {0};
#define FLASH_S_FMA(i) s##i += qg[d * QH + i] * kd;
            QH_EACH(FLASH_S_DECLARE)
            for (int d = 0; d < D; d++) {
                const vf kd = loadf(kt + d * LANES);
                QH_EACH(FLASH_S_FMA)
            }
            const vf sv[QH] = {s0, s1, s2, s3, s4, s5, s6, s7};
            float alpha[QH], mold[QH], mnew[QH];
            vf pv[QH];
            for (int i = 0; i < QH; i++) { /* the tile's probabilities and each query-head's new max */
                const int ii = i0 + i, qpos = p0 + (i0 + (i < ni ? i : 0)) / G;
                mold[i] = mnew[i] = i < ni ? mrow[ii] : 0.f;
                if (i >= ni || qpos < t0) { /* padding, or a row before the tile in the first group that sees it */
                    pv[i] = (vf){0};
                    continue;
                }
                const vf sc = t0 + LANES - 1 > qpos ? mask_after(sv[i], t0, qpos) : sv[i];
                mnew[i] = fmaxf(mrow[ii], hmax(sc));
                pv[i] = (vf)((vi)vexp(sc - mnew[i]) & (vi)(sc > (vf){0} - INFINITY));
            }
            /* the rescale factors of all QH query-heads with one vector exp (0 on a first tile: m = -inf) */
            vf md;
            for (int j = 0; j < LANES; j++) md[j] = j < QH ? mold[j] - mnew[j] : 0.f;
            md = vexp(md);
            for (int i = 0; i < QH; i++) {
                alpha[i] = mold[i] == -INFINITY ? 0.f : md[i];
                if (i < ni) {
                    lrow[i0 + i] = lrow[i0 + i] * alpha[i] + hsum(pv[i]);
                    mrow[i0 + i] = mnew[i];
                }
                memcpy(pt + i * LANES, &pv[i], sizeof pv[i]);
            }
            for (int dv = 0; dv < nd; dv++) {
                float *oi[QH];
                for (int i = 0; i < QH; i++) oi[i] = o + (long)(i0 + i) * D + dv * LANES; /* o has whole groups */
#define FLASH_O_LOAD(i) vf o##i = loadf(oi[i]) * alpha[i];
#define FLASH_O_FMA(i) o##i += pt[i * LANES + j] * vt;
                QH_EACH(FLASH_O_LOAD)
                for (int j = 0; j < nk; j++) {
                    const vf vt = load_kv(v, (long)(t0 + j) * D + dv * LANES, f16);
                    QH_EACH(FLASH_O_FMA)
                }
                const vf ov[QH] = {o0, o1, o2, o3, o4, o5, o6, o7};
                for (int i = 0; i < ni; i++) memcpy(oi[i], &ov[i], sizeof o0);
            }
        }
    }
    for (int i = 0; i < nqh; i++) {
        const float inv = 1.f / lrow[i];
        float *yi = y + (long)(i / G) * y_stride + (long)(i % G) * D;
        for (int d = 0; d < D; d++) yi[d] = o[(long)i * D + d] * inv;
    }
}

/* One attention work item: nq consecutive rows of one slot (b0 the first), one KV head (k, v: its
   cache), through the kernel that fits; f16 a constant at each call, so each cache type gets its own code. */
static inline __attribute__((always_inline)) void attend_item(const float *qkv, long QKV, const int *pos, int b0, int nq,
                                                              int g, int G, int D, int H, const void *k, const void *v,
                                                              float *y, float *scratch, int f16) {
    if (D % LANES == 0 && nq * G >= 8) {
        attend_flash(qkv + (long)b0 * QKV + (long)g * G * D, QKV, nq, pos[b0], G, D, k, v,
                     y + (long)b0 * H * D + (long)g * G * D, (long)H * D, scratch, f16);
        return;
    }
    for (int b = b0; b < b0 + nq; b++) {
        const float *q = qkv + (long)b * QKV + (long)g * G * D;
        float *out = y + (long)b * H * D + (long)g * G * D;
        if (D % LANES == 0) attend_decode(q, k, v, G, D, pos[b] + 1, scratch, out, f16);
        else attend_group(q, k, v, G, D, pos[b] + 1, scratch, out, f16);
    }
}

static long attend_flash_floats(int G, int D) {
    const long nqp = ((long)FLASH_ROWS * G + QH - 1) / QH * QH;
    return nqp * (2L * D + 2) + (long)D * LANES + (long)QH * LANES;
}

/* What this build uses: bit 0 OpenMP threads, bit 1 AVX-512 BF16 dot products, bit 2 an fp16 KV cache. */
int krllm_features(void) {
    int f = (DPBF16 ? 2 : 0) | (KV_F16 ? 4 : 0);
#ifdef _OPENMP
    f |= 1;
#endif
    return f;
}

/* Which int8/int4 kernels this build has: QPATH (2 AVX-512 VNNI, 1 AVX2, 0 portable C). */
int krllm_qpath(void) { return QPATH; }

#define PHASES_PER_LAYER 6

static long widest_input(const Model *m) {
    const long C = m->hidden, HD = (long)m->n_heads * m->head_dim, I = m->inter;
    return I > C ? (I > HD ? I : HD) : (C > HD ? C : HD);
}

/* Attention scratch of a thread: attend_decode's scores (G heads), attend_flash's block state,
   attend_group's scores. */
static long attention_floats(const Model *m) {
    const int G = m->n_heads / m->n_kv;
    const long decode = (long)G * (m->max_seq + LANES), flash = attend_flash_floats(G, m->head_dim);
    return decode > flash ? decode : flash;
}

/* Each thread's own floats: h (B, C); xs, the prepared inputs (B rows of up to widest + QK); xp, the
   packed ones (pack_x's whole blocks); attention scratch; gate/up outputs; a packed weight panel. */
static long per_thread_floats(const Model *m, int B) {
    const long widest = widest_input(m);
    return (long)B * m->hidden + B * (widest + QK) + (B + MR) * widest + attention_floats(m) + 2L * B * CHUNK_MAX +
           NR * widest;
}

/* Floats of `work` that krllm_decode needs for B rows and T threads (krllm.infer.native sizes it). */
long krllm_work_floats(const Model *m, int B, int T) {
    const long C = m->hidden, HD = (long)m->n_heads * m->head_dim, I = m->inter;
    const long QKV = HD + 2L * m->n_kv * m->head_dim;
    const long shared = B * (C + QKV + HD + I);
    return shared + T * per_thread_floats(m, B);
}

/* One token for each of B rows. tokens[b]: input id; pos[b]: its position (= tokens cached so far
   in that slot); rows[b]: its cache row, or -1 for a row that computes nothing (its logits are 0).
   Several rows may share a slot at consecutive positions (a prompt, or a chunk of one): each
   attends to the keys of the rows before it. want[b]: whether row b's logits are computed (NULL:
   all); other rows of `logits` are left as they were. work: krllm_work_floats(m, B, n_threads)
   floats; logits (B, V).
   Returns 0, -1 if a position, row or token is out of range, -2 if out of memory. */
int krllm_decode(const Model *m, int B, const int64_t *tokens, const int *pos, const int *rows, const int *want,
                 float *work, float *logits, int n_threads) {
    const int C = m->hidden, H = m->n_heads, KV = m->n_kv, D = m->head_dim, I = m->inter, V = m->vocab;
    const int G = H / KV, QKV = (H + 2 * KV) * D, S = m->max_seq, R = m->cache_rows, L = m->n_layers;
    int idx[B > 0 ? B : 1], n_live = 0; /* the rows that compute */
    int out[B > 0 ? B : 1], n_out = 0;  /* the rows whose logits are wanted */
    for (int b = 0; b < B; b++) {
        if (rows[b] < 0) {
            if (want == NULL || want[b]) memset(logits + (long)b * V, 0, sizeof(float) * V);
            continue;
        }
        if (pos[b] < 0 || pos[b] >= S || rows[b] >= R || tokens[b] < 0 || tokens[b] >= V) return -1;
        idx[n_live++] = b;
        if (want == NULL || want[b]) out[n_out++] = b;
    }
    const long widest = widest_input(m);
    float *x = work, *qkv = x + (long)B * C, *y = qkv + (long)B * QKV, *act = y + (long)B * H * D;
    float *private0 = act + (long)B * I;
    const long per_thread = per_thread_floats(m, B);

    for (int k = 0; k < n_live; k++) {
        const int b = idx[k];
        if (m->head_qtype == WT_INT8) {
            const int8_t *e = (const int8_t *)m->embed + tokens[b] * (long)QPAD(C);
            const float s = m->embed_s[tokens[b]];
            for (int i = 0; i < C; i++) x[(long)b * C + i] = e[i] * s;
        } else if (m->head_qtype == WT_INT4) {
            const uint8_t *e = (const uint8_t *)m->embed + tokens[b] * (long)QPAD(C) / 2;
            const float *s = m->embed_s + tokens[b] * (long)((C + m->group_size - 1) / m->group_size);
            for (int i = 0; i < C; i++) x[(long)b * C + i] = q4_at(e, i) * s[i / m->group_size];
        } else if (m->bf16) {
            const uint16_t *e = (const uint16_t *)m->embed + tokens[b] * (long)C;
            for (int i = 0; i < C; i++) x[(long)b * C + i] = bf16_to_float(e[i]);
        } else {
            memcpy(x + (long)b * C, (const float *)m->embed + tokens[b] * (long)C, sizeof(float) * C);
        }
    }
    const long n_counters = 2L * (L * PHASES_PER_LAYER + 1) * n_threads;
    Counter *counters = aligned_alloc(64, sizeof(Counter) * n_counters);
    if (counters == NULL) return -2;
    for (long i = 0; i < n_counters; i++) atomic_init(&counters[i].v, 0);
    const int wt = layer_type(m), ht = head_type(m);
    /* attention work: blocks of up to FLASH_ROWS consecutive rows of one slot at consecutive positions
       (a prompt's chunk; a decode row is a block of its own), times the KV heads */
    int blk_first[n_live > 0 ? n_live : 1], blk_len[n_live > 0 ? n_live : 1], n_blocks = 0;
    for (int k = 0; k < n_live; k++) {
        const int b = idx[k];
        if (n_blocks > 0 && blk_len[n_blocks - 1] < FLASH_ROWS) {
            const int prev = idx[k - 1];
            if (b == prev + 1 && rows[b] == rows[prev] && pos[b] == pos[prev] + 1) {
                blk_len[n_blocks - 1]++;
                continue;
            }
        }
        blk_first[n_blocks] = k, blk_len[n_blocks++] = 1;
    }
    int gemm_idx[n_live > 0 ? n_live : 1], rest_idx[n_live > 0 ? n_live : 1], n_gemm = 0, n_rest = 0;
    for (int bi = 0; bi < n_blocks; bi++)
        for (int k = blk_first[bi]; k < blk_first[bi] + blk_len[bi]; k++) {
            if (blk_len[bi] > 1) gemm_idx[n_gemm++] = idx[k];
            else rest_idx[n_rest++] = idx[k];
        }
    Rows lr = {idx, gemm_idx, rest_idx, n_live, n_gemm, n_rest};
    if (wt > WT_BF16 || n_gemm < GEMM_MIN_ROWS) lr = (Rows){idx, NULL, idx, n_live, 0, n_live};
    const Rows hr = {out, NULL, out, n_out, 0, n_out}; /* the LM head: the wanted rows, row kernels */
    const long gu_rows = lr.n_gemm ? NR : chunk_rows(C, wt); /* intermediate units per gate/up item */
    const int gu_items = (int)((I + gu_rows - 1) / gu_rows), attn_items = n_blocks * KV, rope_items = n_live * KV;

#pragma omp parallel num_threads(n_threads)
    {
#ifdef _OPENMP
        float *mine = private0 + (long)omp_get_thread_num() * per_thread;
#else
        float *mine = private0;
#endif
        float *h = mine, *xs = h + (long)B * C, *xp = xs + (long)B * (widest + QK), *scores = xp + (B + MR) * widest;
        float *gu = scores + attention_floats(m);
        float *pack = gu + 2L * B * CHUNK_MAX;
#ifdef _OPENMP
        const int team = omp_get_num_threads(), me = omp_get_thread_num();
#else
        const int team = 1, me = 0;
#endif
        Phase ph[PHASES_PER_LAYER];
        for (int l = 0; l < L; l++) {
            for (int p = 0; p < PHASES_PER_LAYER; p++) ph[p] = phase_at(counters, l * PHASES_PER_LAYER + p, team, me);
            const long layer_base = (long)l * R * KV * S * D;
            rms_norm_rows(m, wt, x, h, xs, xp, &lr);
            matmul_phase(&ph[0], m, layer_mat(m, m->qkv, m->qkv_s, l), C, h, xs, xp, &lr, QKV, qkv, 0, pack);
            /* one (row, KV head) per item: RoPE on that group's q heads and its k head, k and v into
               the cache; all of them before any attention, since rows of one slot (a prompt) attend
               to each other's keys */
            for (int c; (c = claim(&ph[1], rope_items)) >= 0; finish(&ph[1])) {
                const int b = idx[c / KV], g = c % KV;
                float *qb = qkv + (long)b * QKV;
                if (m->qkv_bias != NULL) { /* this group's q heads, its k and v head */
                    const float *bias = m->qkv_bias[l];
                    for (long i = (long)g * G * D; i < (long)(g + 1) * G * D; i++) qb[i] += bias[i];
                    for (long i = (long)(H + g) * D; i < (long)(H + g + 1) * D; i++) qb[i] += bias[i];
                    for (long i = (long)(H + KV + g) * D; i < (long)(H + KV + g + 1) * D; i++) qb[i] += bias[i];
                }
                const float *cs = m->cos + (long)pos[b] * D, *sn = m->sin + (long)pos[b] * D;
                for (int hh = g * G; hh < (g + 1) * G; hh++) rope(qb + (long)hh * D, cs, sn, D);
                rope(qb + (long)(H + g) * D, cs, sn, D);
                const long at = layer_base + (((long)rows[b] * KV + g) * S + pos[b]) * D;
                store_kv(m->k_cache, at, qb + (long)(H + g) * D, D, m->kv_f16);
                store_kv(m->v_cache, at, qb + (long)(H + KV + g) * D, D, m->kv_f16);
            }
            wait_done(&ph[1], rope_items);
            for (int c; (c = claim(&ph[2], attn_items)) >= 0; finish(&ph[2])) { /* the group's heads attend */
                const int first = blk_first[c / KV], nq = blk_len[c / KV], g = c % KV, b0 = idx[first];
                const long base = layer_base + ((long)rows[b0] * KV + g) * S * D;
                const long esize = m->kv_f16 ? 2 : 4;
                const void *kc = (const char *)m->k_cache + base * esize, *vc = (const char *)m->v_cache + base * esize;
                if (m->kv_f16)
                    attend_item(qkv, QKV, pos, b0, nq, g, G, D, H, kc, vc, y, scores, 1);
                else
                    attend_item(qkv, QKV, pos, b0, nq, g, G, D, H, kc, vc, y, scores, 0);
            }
            wait_done(&ph[2], attn_items);
            prepare_rows(wt, y, xs, xp, (long)H * D, &lr);
            matmul_phase(&ph[3], m, layer_mat(m, m->o, m->o_s, l), (long)H * D, y, xs, xp, &lr, C, x, 1, pack);
            rms_norm_rows(m, wt, x, h, xs, xp, &lr);
            /* gate and up rows of the same intermediate units in one item, so it can finish SwiGLU */
            for (int c; (c = claim(&ph[4], gu_items)) >= 0; finish(&ph[4])) {
                const long j0 = c * gu_rows, j1 = j0 + gu_rows < I ? j0 + gu_rows : I, n = j1 - j0;
                const Mat gum = layer_mat(m, m->gate_up, m->gate_up_s, l);
                matmul_any(m, gum, C, h, xs, xp, &lr, j0, j1, gu, 2 * gu_rows, j0, 0, pack);
                matmul_any(m, gum, C, h, xs, xp, &lr, I + j0, I + j1, gu + gu_rows, 2 * gu_rows, I + j0, 0, pack);
                for (int k = 0; k < n_live; k++) {
                    const float *gate = gu + (long)idx[k] * 2 * gu_rows, *up = gate + gu_rows;
                    float *a = act + (long)idx[k] * I + j0;
                    long i = 0;
                    for (; i + LANES <= n; i += LANES) {
                        const vf gv = loadf(gate + i), av = gv / (1.f + vexp(-gv)) * loadf(up + i);
                        memcpy(a + i, &av, sizeof av);
                    }
                    for (; i < n; i++) a[i] = gate[i] / (1.f + expf(-gate[i])) * up[i];
                }
            }
            wait_done(&ph[4], gu_items);
            prepare_rows(wt, act, xs, xp, I, &lr);
            matmul_phase(&ph[5], m, layer_mat(m, m->down, m->down_s, l), I, act, xs, xp, &lr, C, x, 1, pack);
        }
        rms_norm_rows(m, ht, x, h, xs, xp, &hr);
        Phase last = phase_at(counters, L * PHASES_PER_LAYER, team, me);
        matmul_phase(&last, m, (Mat){m->lm_head, m->lm_head_s, ht}, C, h, xs, xp, &hr, V, logits, 0, pack);
    }
    free(counters);
    return 0;
}
