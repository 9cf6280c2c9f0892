"""OpenAI API shapes (requests and responses) as pydantic models, plus the error type.

Requests reject unknown parameters (as OpenAI does) so a typo is a 400, not silently ignored, and
numbers the engine cannot use (NaN, Infinity, integers beyond int64) so they are a 400, not a 500.
Besides OpenAI's fields we accept the sampling extensions vLLM uses: `top_k`, `min_p`,
`repetition_penalty`, `ignore_eos`. Fields OpenAI has but this server cannot honour (`n > 1`,
`logprobs`, penalties other than 0) are rejected with a message that says so.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class ApiError(Exception):
    """Becomes `{"error": {"message", "type", "param", "code"}}` with HTTP `status`."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # JSON integers are unbounded; torch tensors and generators are not


class _Request(BaseModel):
    # allow_inf_nan=False: Python's JSON reader turns NaN / Infinity into floats the sampler cannot use
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1, description="new tokens at most (server default and limit apply)")
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    stop: str | list[str] | None = Field(None, validate_default=True)
    seed: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    user: str | None = None
    logprobs: bool | int | None = None
    # extensions (vLLM names)
    top_k: int = Field(0, ge=0, le=INT64_MAX, description="0 = off")
    min_p: float = Field(0.0, ge=0, le=1)
    repetition_penalty: float = Field(1.0, gt=0)
    ignore_eos: bool = False

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        if v is None:
            return []
        stops = [v] if isinstance(v, str) else v
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        return [s for s in stops if s]

    @model_validator(mode="after")
    def _unsupported(self):
        if self.n != 1:
            raise ValueError("n > 1 is not supported by this server (send n separate requests)")
        if self.logprobs:
            raise ValueError("logprobs are not supported by this server")
        if self.presence_penalty or self.frequency_penalty:
            raise ValueError("presence_penalty / frequency_penalty are not supported; use repetition_penalty "
                             "(e.g. 1.1)")
        return self

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")  # tolerate `name`, `refusal`, ... sent back by clients

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = ""

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    @property
    def requested_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def chat_messages(self) -> list[dict]:
        # "developer" is OpenAI's newer name for the system role
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]


class CompletionRequest(_Request):
    prompt: str | list[str] | list[int]
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    @model_validator(mode="after")
    def _completion_checks(self):
        if self.suffix:
            raise ValueError("suffix (fill-in-the-middle) is not supported")
        if self.best_of not in (None, 1):
            raise ValueError("best_of > 1 is not supported")
        if isinstance(self.prompt, list) and not self.prompt:
            raise ValueError("prompt must not be empty")
        return self

    @property
    def requested_tokens(self) -> int | None:
        return self.max_tokens

    def prompts(self) -> list[str | list[int]]:
        """One entry per choice: a string, or token ids when the prompt is a list of ints."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        if all(isinstance(p, int) for p in self.prompt):
            return [list(self.prompt)]
        return list(self.prompt)


# ---------------------------------------------------------------------- responses
def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_completion(id_: str, model: str, text: str, finish: str, n_prompt: int, n_out: int) -> dict:
    return {"id": id_, "object": "chat.completion", "created": now(), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "logprobs": None, "finish_reason": finish}],
            "usage": usage(n_prompt, n_out), "system_fingerprint": None}


def chat_chunk(id_: str, model: str, created: int, delta: dict, finish: str | None = None,
               usage_: dict | None = None, choices: bool = True) -> dict:
    out = {"id": id_, "object": "chat.completion.chunk", "created": created, "model": model,
           "system_fingerprint": None,
           "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}] if choices else []}
    if usage_ is not None:
        out["usage"] = usage_
    return out


def text_completion(id_: str, model: str, texts: list[str], finishes: list[str], n_prompt: int, n_out: int) -> dict:
    return {"id": id_, "object": "text_completion", "created": now(), "model": model,
            "choices": [{"index": i, "text": t, "logprobs": None, "finish_reason": f}
                        for i, (t, f) in enumerate(zip(texts, finishes))],
            "usage": usage(n_prompt, n_out), "system_fingerprint": None}


def text_chunk(id_: str, model: str, created: int, index: int, text: str, finish: str | None = None,
               usage_: dict | None = None, choices: bool = True) -> dict:
    out = {"id": id_, "object": "text_completion", "created": created, "model": model, "system_fingerprint": None,
           "choices": [{"index": index, "text": text, "logprobs": None, "finish_reason": finish}] if choices else []}
    if usage_ is not None:
        out["usage"] = usage_
    return out


def model_list(model_id: str, created: int) -> dict:
    return {"object": "list", "data": [{"id": model_id, "object": "model", "created": created, "owned_by": "krllm"}]}
