"""The model config: one flat object whose field names are transformers' `LlamaConfig` names.

It describes the Llama family and Qwen2 / Qwen2.5, which is a Llama with biases on q/k/v
(`attention_bias: true`, no sliding window). The HF `model_type` is derived, not stored:
`cfg.model_type` is "qwen2" when `attention_bias` is on, else "llama", and `to_hf_dict()` writes
that type and its architecture class, so transformers reloads what krllm saves.

Why flat and HF-named: `cfg.to_hf_dict()` *is* the `config.json` that `AutoModelForCausalLM`
reads, and any HF Llama `config.json` maps back with `ModelConfig.from_hf_dict`. Derived values
(`head_dim`, `num_key_value_heads`) are filled in here, and every impossible combination is
reported at once, each with its key and what to change.

    cfg = model_config_from("tiny", vocab_size=8000)
    cfg = model_config_from("configs/model/small.yaml", ["num_hidden_layers=6"])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Literal

from pydantic import Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from krllm.config import ConfigError, StrictModel, apply_overrides, format_validation_error, read_yaml

# model_type -> the transformers class `to_hf_dict` names (and `from_hf_dict` accepts).
HF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}


ROPE_TYPES = ("default", "linear", "llama3")  # what `from_hf_dict` accepts in rope_parameters / rope_scaling
_ROPE_TYPE_KEYS = ("rope_type", "type", "rope_theta")  # in those dicts, but not scaling parameters


def _raise_all(title: str, error_type: str, problems: list[tuple[str, str, object]]) -> None:
    """Report every (key, message, value) problem at once, as one pydantic ValidationError."""
    if problems:
        raise ValidationError.from_exception_data(
            title, [InitErrorDetails(type=PydanticCustomError(error_type, msg), loc=(key,), input=value)
                    for key, msg, value in problems])


def _qwen2_window_problems(d: dict) -> list[str]:
    """Qwen2's sliding-window attention, as transformers' Qwen2Config decides it: layers at index >=
    max_window_layers (or those `layer_types` names) attend to the last `sliding_window` keys only,
    if use_sliding_window. krllm attends to every key, which is the same when the window covers the
    whole context (Qwen2.5's releases: use_sliding_window false)."""
    window = d.get("sliding_window")
    if not d.get("use_sliding_window") or window is None:
        return []
    n_layers = d.get("num_hidden_layers", 0)
    types = d.get("layer_types")
    sliding = ("sliding_attention" in types) if isinstance(types, list) else \
        d.get("max_window_layers", n_layers) < n_layers
    context = d.get("max_position_embeddings", 2048)
    if sliding and window < context:
        return [f"use_sliding_window: sliding-window attention (sliding_window={window} < "
                f"max_position_embeddings={context}) is not implemented by krllm's Llama, which attends to "
                "every key (transformers' own Qwen2 runs it)"]
    return []


class RopeScaling(StrictModel):
    """RoPE frequency scaling of long-context checkpoints, with transformers' names and formulas
    (`rope_parameters` / `rope_scaling` in config.json; `transformers.modeling_rope_utils`).

    - "linear": every inverse frequency divided by `factor` (positions interpolated);
    - "llama3" (Llama 3.1 / 3.2 / 3.3): wavelengths longer than `original_max_position_embeddings /
      low_freq_factor` divided by `factor`, shorter than `... / high_freq_factor` kept, the band
      between blended smoothly.
    """

    rope_type: Literal["linear", "llama3"] = Field(description="scaling scheme")
    factor: float = Field(gt=0, description="how much longer than pretraining the context is (e.g. 8, 32)")
    low_freq_factor: float | None = Field(None, gt=0, description="llama3 only (Llama 3.x: 1)")
    high_freq_factor: float | None = Field(None, gt=0, description="llama3 only (Llama 3.x: 4)")
    original_max_position_embeddings: int | None = Field(
        None, gt=0, description="llama3 only: pretraining context (Llama 3.x: 8192); None = max_position_embeddings")

    @model_validator(mode="after")
    def _check_type_parameters(self) -> "RopeScaling":
        problems: list[tuple[str, str, Any]] = []
        llama3_only = ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
        if self.rope_type == "llama3":
            for key in ("low_freq_factor", "high_freq_factor"):
                if getattr(self, key) is None:
                    problems.append((key, "required for rope_type 'llama3' (Llama 3.x uses low 1, high 4)", None))
            lo, hi = self.low_freq_factor, self.high_freq_factor
            if lo is not None and hi is not None and hi <= lo:
                problems.append(("high_freq_factor", f"must be larger than low_freq_factor={lo}", hi))
        else:
            for key in llama3_only:
                if getattr(self, key) is not None:
                    problems.append((key, f"is a 'llama3' parameter; rope_type {self.rope_type!r} takes only "
                                     "factor", getattr(self, key)))
        _raise_all("RopeScaling", "rope_scaling", problems)
        return self


class ModelConfig(StrictModel):
    """A decoder-only Llama (RMSNorm, RoPE, GQA attention, SwiGLU MLP) — transformers' names."""

    vocab_size: int = Field(8000, gt=0, description="rows of the embedding; >= the tokenizer's vocab size")
    hidden_size: int = Field(256, gt=0, description="width of the residual stream (C)")
    intermediate_size: int = Field(688, gt=0, description="width of the SwiGLU MLP (about 8/3 * hidden_size)")
    num_hidden_layers: int = Field(4, gt=0, description="number of transformer blocks (L)")
    num_attention_heads: int = Field(8, gt=0, description="query heads (H)")
    num_key_value_heads: int | None = Field(
        None, gt=0, description="key/value heads (H_kv) for grouped-query attention; None = num_attention_heads"
    )
    head_dim: int | None = Field(None, gt=0, description="per-head width (D); None = hidden_size // num_attention_heads")
    max_position_embeddings: int = Field(2048, gt=0, description="longest sequence (tokens) the RoPE table covers")
    rope_theta: float = Field(10000.0, gt=0, description="RoPE base; larger = slower-rotating, longer contexts")
    rope_scaling: RopeScaling | None = Field(
        None, description="RoPE frequency scaling of long-context checkpoints ('llama3', 'linear'); None = plain RoPE")
    rms_norm_eps: float = Field(1e-5, gt=0, description="epsilon inside RMSNorm's rsqrt")
    tie_word_embeddings: bool = Field(False, description="lm_head shares the embedding matrix")
    attention_bias: bool = Field(
        False, description="biases on q/k/v_proj (not o_proj), as Qwen2 / Qwen2.5; saved as model_type qwen2")
    initializer_range: float = Field(0.02, gt=0, le=1.0, description="std of the normal init of weights")
    bos_token_id: int | None = Field(0, ge=0)
    eos_token_id: int | list[int] | None = Field(0, description="one id or a list of ids that end generation")
    pad_token_id: int | None = Field(1, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _fill_derived(cls, data: Any) -> Any:
        """`head_dim` and `num_key_value_heads` default from the head count (as in transformers)."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        heads, hidden = data.get("num_attention_heads", 8), data.get("hidden_size", 256)
        if data.get("num_key_value_heads") is None and isinstance(heads, int):
            data["num_key_value_heads"] = heads
        if data.get("head_dim") is None and isinstance(heads, int) and isinstance(hidden, int) and heads > 0 \
                and hidden >= heads:
            data["head_dim"] = hidden // heads
        return data

    @model_validator(mode="after")
    def _check_shapes(self) -> "ModelConfig":
        """Every cross-field problem at once, each under its own key with the fix to make."""
        problems: list[tuple[str, str, Any]] = []
        c, h, kv, d = self.hidden_size, self.num_attention_heads, self.num_key_value_heads, self.head_dim
        if c % h:
            problems.append(("hidden_size", f"hidden_size={c} is not divisible by num_attention_heads={h}: "
                             f"pick a multiple of {h} (e.g. {(c // h + 1) * h}) or a head count that divides {c}", c))
        if kv is not None and h % kv:
            divisors = [k for k in range(1, h + 1) if h % k == 0]
            problems.append(("num_key_value_heads", f"num_attention_heads={h} is not divisible by "
                             f"num_key_value_heads={kv}: use one of {divisors}", kv))
        if d is not None and d % 2:
            problems.append(("head_dim", f"head_dim={d} is odd; RoPE rotates pairs of dimensions, so it must be "
                             "even (change hidden_size / num_attention_heads or set head_dim)", d))
        if self.bos_token_id is not None and self.bos_token_id >= self.vocab_size:
            problems.append(("bos_token_id", f"bos_token_id={self.bos_token_id} is outside the vocabulary "
                             f"(vocab_size={self.vocab_size})", self.bos_token_id))
        if self.pad_token_id is not None and self.pad_token_id >= self.vocab_size:
            problems.append(("pad_token_id", f"pad_token_id={self.pad_token_id} is outside the vocabulary "
                             f"(vocab_size={self.vocab_size})", self.pad_token_id))
        for eos in self.eos_ids:
            if not 0 <= eos < self.vocab_size:
                problems.append(("eos_token_id", f"eos id {eos} is outside the vocabulary "
                                 f"(vocab_size={self.vocab_size})", self.eos_token_id))
        _raise_all("ModelConfig", "model_shape", problems)
        return self

    @property
    def eos_ids(self) -> list[int]:
        """`eos_token_id` as a list (possibly empty)."""
        if self.eos_token_id is None:
            return []
        return [self.eos_token_id] if isinstance(self.eos_token_id, int) else list(self.eos_token_id)

    @property
    def model_type(self) -> str:
        """The HF model_type this config is saved as: "qwen2" with q/k/v biases, else "llama"."""
        return "qwen2" if self.attention_bias else "llama"

    @property
    def kv_heads(self) -> int:
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    def to_hf_dict(self) -> dict:
        """The `config.json` body transformers reads as `LlamaConfig`, or `Qwen2Config` with
        attention_bias (and mlx-lm / llama.cpp read too).

        `rope_theta` is written twice on purpose: transformers 5 reads `rope_parameters`, while mlx-lm
        (and transformers 4) read the top-level key and silently fall back to 10000 without it. For the
        same readers, RoPE scaling goes into `rope_parameters` and, identical, into `rope_scaling`.
        """
        d = self.model_dump(mode="json", exclude={"rope_scaling"})
        rope: dict[str, Any] = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_scaling is not None:
            scaling = self.rope_scaling.model_dump(mode="json", exclude_none=True)
            rope = {"rope_type": scaling["rope_type"], "rope_theta": self.rope_theta, **scaling}
            d["rope_scaling"] = scaling
        d.update(
            architectures=[HF_ARCHITECTURES[self.model_type]],
            model_type=self.model_type,
            hidden_act="silu",
            attention_dropout=0.0,
            rope_parameters=rope,
            use_cache=True,
        )
        if self.model_type == "llama":  # LlamaConfig's attention_bias would add an o_proj bias too
            d.update(attention_bias=False, mlp_bias=False)
        else:  # Qwen2Config: biases are implied (no key); no sliding window
            del d["attention_bias"]
            d.update(use_sliding_window=False, sliding_window=None, max_window_layers=self.num_hidden_layers)
        return d

    @classmethod
    def from_hf_dict(cls, d: dict, source: str = "config.json") -> "ModelConfig":
        """An HF Llama or Qwen2 `config.json` -> ModelConfig; features we do not implement are errors.

        Qwen2 (model_type "qwen2", Qwen2 / Qwen2.5) always has q/k/v biases (its config.json has no
        `attention_bias` key); its sliding window is accepted only where it never binds.
        """
        problems = []
        model_type = d.get("model_type", "llama")
        if model_type not in HF_ARCHITECTURES:
            problems.append(f"model_type: {model_type!r} is not a Llama-architecture model; krllm's Llama loads "
                            f"model_type {' or '.join(map(repr, HF_ARCHITECTURES))} "
                            f"({', '.join(HF_ARCHITECTURES.values())})")
        if d.get("hidden_act", "silu") != "silu":
            problems.append(f"hidden_act: {d['hidden_act']!r} is not supported (Llama uses 'silu')")
        if d.get("mlp_bias"):
            problems.append("mlp_bias: biases in the MLP are not supported by krllm's Llama (must be false)")
        if model_type != "qwen2" and d.get("attention_bias"):
            problems.append("attention_bias: a Llama with attention_bias has an o_proj bias too, which krllm's "
                            "Llama does not implement (must be false; Qwen2's q/k/v-only biases are supported)")
        if model_type == "qwen2":
            problems += _qwen2_window_problems(d)
        # transformers 5 writes `rope_parameters`, 4 writes `rope_scaling` (+ top-level rope_theta);
        # when both are present `rope_scaling` wins, as in transformers' LlamaConfig
        rope_key = "rope_scaling" if d.get("rope_scaling") else "rope_parameters"
        rope = d.get(rope_key) or {}
        scaling = None
        if not isinstance(rope, dict):
            problems.append(f"{rope_key}: must be an object with 'rope_type', got {type(rope).__name__}")
            rope = {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ROPE_TYPES:
            problems.append(f"{rope_key}.rope_type: {rope_type!r} RoPE scaling is not supported (krllm implements "
                            f"{', '.join(map(repr, ROPE_TYPES))})")
        elif rope.get("partial_rotary_factor", 1.0) != 1.0:
            problems.append(f"{rope_key}.partial_rotary_factor: {rope['partial_rotary_factor']} is not supported "
                            "(RoPE on part of each head); krllm rotates whole heads (1.0)")
        elif rope_type != "default":
            scaling = {"rope_type": rope_type, **{k: v for k, v in rope.items()
                                                  if k not in _ROPE_TYPE_KEYS and k != "partial_rotary_factor"}}
        if problems:
            raise ConfigError(source, problems)
        known = set(cls.model_fields)
        data = {k: v for k, v in d.items() if k in known}
        data["rope_scaling"] = scaling
        data["attention_bias"] = model_type == "qwen2"
        theta = next((r["rope_theta"] for r in (d.get("rope_scaling"), d.get("rope_parameters"))
                      if isinstance(r, dict) and r.get("rope_theta") is not None), d.get("rope_theta", 10000.0))
        data["rope_theta"] = float(theta)
        return validate_model_config(data, source)

    # ------------------------------------------------------------------ the guides' Python API
    # The setup guide our users follow writes `TransformerConfig.from_yaml(path)`, `.medium()`,
    # `config.num_parameters`, `config.to_dict()`, `config.save_yaml(path)` and `config.num_layers = 20`;
    # these are thin spellings of what `model_config_from`, PRESETS and `krllm.model.sizing` already do.

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Iterable[str] = ()) -> "ModelConfig":
        """A model YAML (`preset:` allowed, `key=value` overrides) -> config; every problem reported at once."""
        return model_config_from(Path(path), overrides)

    @classmethod
    def preset(cls, name: str, **fields: Any) -> "ModelConfig":
        """A named preset (tiny, small, medium, large) with fields overridden, e.g. vocab_size=16000."""
        if name not in PRESETS:
            raise ConfigError(f"preset {name}", [f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}"])
        return validate_model_config({**PRESETS[name], **fields}, f"preset {name}")

    @classmethod
    def tiny(cls, **fields: Any) -> "ModelConfig":
        return cls.preset("tiny", **fields)

    @classmethod
    def small(cls, **fields: Any) -> "ModelConfig":
        return cls.preset("small", **fields)

    @classmethod
    def medium(cls, **fields: Any) -> "ModelConfig":
        return cls.preset("medium", **fields)

    @classmethod
    def large(cls, **fields: Any) -> "ModelConfig":
        return cls.preset("large", **fields)

    @property
    def num_parameters(self) -> int:
        """Exact parameter count (a tied lm_head counted once), computed without building the model."""
        from krllm.model.sizing import count_parameters

        return count_parameters(self).total

    @property
    def num_layers(self) -> int:
        """The guide's name for `num_hidden_layers` (assignable)."""
        return self.num_hidden_layers

    @num_layers.setter
    def num_layers(self, value: int) -> None:
        self.num_hidden_layers = value

    def to_dict(self) -> dict:
        """The fields as plain JSON-able values: what `save_yaml` writes and `from_yaml` reads back."""
        return self.model_dump(mode="json", exclude_none=True)

    def save_yaml(self, path: str | Path) -> Path:
        """Write the config as a model YAML (atomically); `ModelConfig.from_yaml(path)` gives it back equal."""
        import yaml

        from krllm.config import atomic_write_text

        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True))
        return Path(path)


# The setup guide's name for the model config.
TransformerConfig = ModelConfig


def validate_model_config(data: dict, source: str = "<model config>") -> ModelConfig:
    try:
        return ModelConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(source, format_validation_error(e)) from None


# Presets. Parameter counts are exact for the vocab shown (see `krllm model info PRESET`).
PRESETS: dict[str, dict] = {
    # 4,950,272 params with vocab 8000 (tied): a model that trains in minutes on a laptop CPU.
    "tiny": dict(vocab_size=8000, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                 num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=1024,
                 tie_word_embeddings=True),
    # GPT-2-small width with Llama blocks; 3 kv heads (GQA 4:1 like the larger presets).
    "small": dict(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                  num_attention_heads=12, num_key_value_heads=3, max_position_embeddings=2048,
                  tie_word_embeddings=True),
    "medium": dict(vocab_size=32000, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                   num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=2048,
                   tie_word_embeddings=True),
    "large": dict(vocab_size=32000, hidden_size=1536, intermediate_size=6144, num_hidden_layers=24,
                  num_attention_heads=24, num_key_value_heads=6, max_position_embeddings=4096,
                  rope_theta=500000.0, tie_word_embeddings=False),
}


def model_config_from(
    spec: str | Path | dict | ModelConfig,
    overrides: Iterable[str] = (),
    vocab_size: int | None = None,
) -> ModelConfig:
    """Preset name, YAML path, dict or ModelConfig (+ `key=value` overrides, + tokenizer vocab) -> config.

    A YAML (or dict) may say `preset: tiny` and override any field. `vocab_size` (usually the
    tokenizer's) wins over the preset and file but not over an explicit override.
    """
    overrides = list(overrides or ())
    if isinstance(spec, ModelConfig):
        data, source = spec.model_dump(), "<ModelConfig>"
    elif isinstance(spec, dict):
        data, source = dict(spec), "<dict>"
    elif isinstance(spec, (str, Path)) and str(spec) in PRESETS:
        data, source = {"preset": str(spec)}, f"preset {spec}"
    elif isinstance(spec, (str, Path)) and (Path(spec).suffix in (".yaml", ".yml") or Path(spec).exists()):
        data, source = read_yaml(spec), str(spec)
    else:
        raise ConfigError(str(spec), [f"not a preset ({', '.join(PRESETS)}) and not a YAML file that exists"])
    preset = data.pop("preset", None)
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(source, [f"preset: unknown preset {preset!r}; choose one of {', '.join(PRESETS)}"])
        data = {**PRESETS[preset], **data}
    if vocab_size is not None:
        data["vocab_size"] = int(vocab_size)
    data = apply_overrides(data, overrides)
    if overrides:
        source += " with --set " + " ".join(overrides)
    return validate_model_config(data, source)
