"""Property-based tests (hypothesis): random input never crashes a reader with a traceback.

What could break: a record reader, the config loader or the server's request schema meeting an input
shape nobody wrote a test for (random bytes, odd encodings, deep nesting, random keys and values,
random JSON bodies). Each must either accept the input or raise the error type the CLI / server turns
into one message (DataError / ConfigError -> `error:` line, exit 1-2; ValidationError / ValueError ->
HTTP 400), never anything else.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from krllm.config import ConfigError, load_config
from krllm.data.sets.records import KINDS, load_examples
from krllm.errors import KrllmError

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20)
record_like = st.dictionaries(
    st.sampled_from(["messages", "prompt", "chosen", "rejected", "text", "label", "instruction", "output",
                     "ground_truth_answer", "answer", "role", "content", "x"]), json_values, max_size=5)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(kind=st.sampled_from(KINDS), lines=st.lists(record_like | json_values, min_size=1, max_size=6))
def test_jsonl_records_are_accepted_or_one_data_error(tmp_path, kind, lines):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n", encoding="utf-8")
    try:
        records = load_examples(path, kind)
    except KrllmError as e:
        assert str(path) in str(e)
    else:
        assert len(records) == sum(1 for x in lines)  # nothing dropped silently


@SETTINGS
@given(raw=st.binary(max_size=300), encoding_bom=st.booleans())
def test_random_bytes_are_accepted_or_one_data_error(tmp_path, raw, encoding_bom):
    path = tmp_path / "data.jsonl"
    path.write_bytes((b"\xef\xbb\xbf" if encoding_bom else b"") + raw)
    try:
        load_examples(path, "sft")
    except KrllmError as e:
        assert str(path) in str(e)


config_values = st.one_of(st.integers(-10**20, 10**20), st.floats(), st.text(max_size=12), st.booleans(),
                          st.none(), st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5),
                                                                                           st.integers(), max_size=2))
config_keys = st.sampled_from(["name", "base_model", "train.lr", "train.max_steps", "train.batch_size",
                               "train.dtype", "peft.r", "peft.method", "peft.target_modules", "data.n", "data",
                               "train", "grpo.num_generations", "grpo.temperature", "rewards", "nosuch.key",
                               "train.nosuch"])


@SETTINGS
@given(overrides=st.lists(st.tuples(config_keys, config_values), max_size=4))
def test_config_overrides_give_a_valid_config_or_one_config_error(overrides):
    from krllm.train.grpo_config import GRPORunConfig

    items = [f"{k}={json.dumps(v)}" for k, v in overrides]
    try:
        load_config("configs/grpo/math_lora.yaml", GRPORunConfig, items)
    except (ConfigError, KrllmError) as e:
        assert str(e)


@SETTINGS
@given(body=st.dictionaries(st.sampled_from(["messages", "prompt", "max_tokens", "temperature", "top_p", "top_k",
                                             "min_p", "seed", "stop", "n", "stream", "repetition_penalty",
                                             "logprobs", "model", "stream_options", "extra"]),
                            json_values | st.floats() | st.integers(-2**70, 2**70), max_size=6))
def test_request_bodies_validate_or_are_a_400(body):
    """The schema and the sampler settings the server builds: ValidationError / ValueError (both 400)."""
    from pydantic import ValidationError

    from krllm.infer.protocol import ChatCompletionRequest, CompletionRequest
    from krllm.infer.sampling import SamplingParams

    for schema in (ChatCompletionRequest, CompletionRequest):
        try:
            req = schema.model_validate(body)
            SamplingParams(temperature=req.temperature, top_k=req.top_k, top_p=req.top_p, min_p=req.min_p,
                           repetition_penalty=req.repetition_penalty, seed=req.seed)
        except (ValidationError, ValueError):
            pass

