"""Serving configuration: named limits (defaults) and the schema `krllm serve --config/--set` reads.

Every limit is a named constant here and a config key, so a deployment changes it in YAML
(`configs/serve/default.yaml`) or with `--set limits.max_tokens=512` without touching code.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from krllm.config import StrictModel

# Request limits: a request beyond them gets a 4xx with an OpenAI-style error body.
MAX_TOKENS = 1024  # largest max_tokens a request may ask for (400 above it)
DEFAULT_MAX_TOKENS = 256  # new tokens when a request does not say
MAX_PROMPT_TOKENS = 4096  # longest prompt after the chat template (400 above it; also bounded by max_seq_len)
MAX_CONCURRENT = 64  # requests running + waiting; the next one gets 429 until one finishes
MAX_REQUEST_BYTES = 1 << 20  # request body size (413 above it)
MAX_BATCH = 16  # KV-cache slots: sequences decoded together in one step
PREFILL_CHUNK = 512  # prompt tokens prefilled per engine step beside the decode rows (chunked prefill)
DEFAULT_PORT = 8000
DEFAULT_HOST = "127.0.0.1"  # local only; use 0.0.0.0 on purpose (and set an API key) to expose it


class LimitsConfig(StrictModel):
    max_tokens: int = Field(MAX_TOKENS, ge=1, description="largest max_tokens a request may ask for")
    default_max_tokens: int = Field(DEFAULT_MAX_TOKENS, ge=1, description="max_tokens when a request omits it")
    max_prompt_tokens: int = Field(MAX_PROMPT_TOKENS, ge=1, description="longest prompt in tokens")
    max_concurrent: int = Field(MAX_CONCURRENT, ge=1, description="running + waiting requests before 429")
    max_request_bytes: int = Field(MAX_REQUEST_BYTES, ge=1024, description="request body size before 413")

    @model_validator(mode="after")
    def _defaults_within_limits(self):
        if self.default_max_tokens > self.max_tokens:
            raise ValueError(f"default_max_tokens={self.default_max_tokens} exceeds max_tokens={self.max_tokens}")
        return self


class EngineConfig(StrictModel):
    max_batch: int = Field(MAX_BATCH, ge=1, description="KV-cache slots (sequences decoded together)")
    prefill_chunk: int = Field(PREFILL_CHUNK, ge=0, description="prompt tokens prefilled per step while the "
                               "running sequences decode; a longer prompt takes several steps; 0 = each "
                               "prompt whole in one step (running streams wait for it)")
    max_seq_len: int = Field(0, ge=0, description="prompt + output tokens per sequence; 0 = the model's "
                                                  "max_position_embeddings")
    kv_dtype: Literal["auto", "fp32", "fp16"] = Field(
        "auto", description="KV cache dtype: auto = the model's dtype on GPUs; on CPU fp16 for bf16 models where "
                            "the C step does all attention (AVX-512 BF16), else fp32; fp16 halves the "
                            "cache's memory and the bytes each decode step reads from it (llama.cpp's default)")
    device: str = Field("auto", description="auto (cuda > mps > cpu), cpu, cuda, mps")
    dtype: str | None = Field("auto", description="auto = bf16 where the device multiplies it natively (CUDA, "
                                                  "CPUs with AVX-512 BF16 / AMX), else fp32; None = as saved; "
                                                  "fp32, bf16 or fp16 to cast; int8 / int4 to "
                                                  "quantize the weights at load (docs/quantization.md)")
    threads: int = Field(0, ge=0, description="CPU threads for torch; 0 = torch's default (all cores). On a "
                                              "machine shared with other jobs, 1 is often much faster")


class ServeConfig(StrictModel):
    host: str = DEFAULT_HOST
    port: int = Field(DEFAULT_PORT, ge=0, le=65535, description="0 = pick a free port")
    model_name: str | None = Field(None, description="id shown by /v1/models; default: the directory name")
    limits: LimitsConfig = LimitsConfig()
    engine: EngineConfig = EngineConfig()
