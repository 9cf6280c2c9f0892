"""RL rollouts on krllm's engine: all completions of a batch of prompts in one batched pass, on the
policy's current weights, in the training process (what TRL's `GRPOTrainer(rollout_func=...)` calls).

Why not TRL's own generation: on CPU it is transformers' `generate` on the PEFT-wrapped policy (every
LoRA matmul separate, Python per layer per token), and vLLM is CUDA-only. Here the policy's weights are
read into a decoding copy of krllm's Llama (LoRA / DoRA merged in fp32, krllm.model.adapters) once per
optimizer step, and the engine decodes every completion of the step together: continuous batching, the
KV cache, and the C step on CPU. The copy costs one pass over the weights per step (`refresh_s` in the
metrics); families krllm does not implement decode the live policy itself through transformers.

    rollout = EngineRollout(tokenizer, max_new_tokens=128, temperature=1.0)
    trainer = GRPOTrainer(..., rollout_func=rollout)
    out = rollout(prompts, trainer)   # {"prompt_ids", "completion_ids", "logprobs"}, one row per prompt

Log-probabilities are those of the chosen tokens under softmax(logits / temperature), the quantity
TRL's loss computes with the policy's forward; a completion that stopped ends with its stop token
(<|im_end|>), so the policy learns to stop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from krllm.data.tokens.chat_tokens import generation_prompt_ids
from krllm.errors import KrllmError
from krllm.infer.engine import Engine
from krllm.infer.sampling import SamplingParams
from krllm.model.config_facts import config_max_len, text_config


def unwrap_peft(policy):
    """(the transformers model inside a PEFT wrapper, or the policy itself; whether it was wrapped)."""
    if hasattr(policy, "get_base_model") and hasattr(policy, "peft_config"):
        return policy.get_base_model(), True
    return policy, False


def _krllm_config(hf_config):
    """krllm's ModelConfig for a transformers config its own Llama runs (llama, qwen2), else None."""
    from krllm.config import ConfigError
    from krllm.model.config import ModelConfig
    from krllm.model.registry import family_for

    cfg = text_config(hf_config)
    if not family_for(getattr(cfg, "model_type", None)).fast:
        return None
    try:
        return ModelConfig.from_hf_dict(cfg.to_dict(), source=f"{type(cfg).__name__}")
    except ConfigError:
        return None


def _base_weights(model) -> dict[str, torch.Tensor]:
    """The frozen weights under a PEFT-injected model, named as in a plain HF model: LoRA's
    `base_layer` and modules_to_save's `original_module` stand for the module; adapter tensors skipped
    (they are merged afterwards from the adapter state dict)."""
    out = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if ".lora_" in name or ".modules_to_save." in name:
            continue
        out[name.replace(".base_layer.", ".").replace(".original_module.", ".")] = p
    return out


class PolicyCopy:
    """krllm's Llama holding a policy's current weights (adapters merged), rebuilt by `sync`."""

    def __init__(self, policy):
        base, _ = unwrap_peft(policy)
        if getattr(base, "is_quantized", False) or getattr(base, "hf_quantizer", None) is not None:
            raise KrllmError("a quantized (QLoRA) policy has no full-precision weights to copy")
        cfg = _krllm_config(base.config)
        if cfg is None:
            raise KrllmError(f"krllm's engine has no fast path for {type(base).__name__}")
        from krllm.model.llama import Llama

        p = next(base.parameters())
        with torch.device("meta"):
            self.model = Llama(cfg)
        self.model.to_empty(device=p.device)
        self.model.model.rotary_emb.reset_tables(cfg.max_position_embeddings, p.device)
        self.model.tie_weights()
        self.model.to(p.dtype).eval().requires_grad_(False)

    @torch.no_grad()
    def sync(self, policy) -> None:
        """Copy the policy's weights in (base, then its adapter merged in fp32)."""
        from krllm.model.adapters import merge_adapter_weights

        base, wrapped = unwrap_peft(policy)
        src = _base_weights(base)
        for name, p in self.model.named_parameters(remove_duplicate=False):
            if name not in src:
                raise KrllmError(f"the policy has no weight {name!r} for krllm's Llama copy")
            p.copy_(src[name])
        if wrapped:
            from peft import get_peft_model_state_dict

            name = policy.active_adapter if isinstance(policy.active_adapter, str) else policy.active_adapters[0]
            merge_adapter_weights(self.model, policy.peft_config[name].to_dict(),
                                  get_peft_model_state_dict(policy, adapter_name=name), source="the live adapter")


@dataclass
class RolloutStats:
    """What the last rollout cost: seconds generating, seconds copying weights, tokens generated."""

    generate_s: float = 0.0
    refresh_s: float = 0.0
    completion_tokens: int = 0
    calls: int = 0
    path: str = ""


class EngineRollout:
    """A `rollout_func` for TRL's GRPOTrainer on krllm's engine (see the module docstring).

    One completion per prompt it is given (TRL's sampler already repeats each prompt `num_generations`
    times). `stop_ids`: the end-of-turn ids (default: krllm.data.tokens.chat_tokens.stop_ids).
    """

    def __init__(self, tokenizer, max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
                 top_k: int = 0, min_p: float = 0.0, repetition_penalty: float = 1.0,
                 stop_ids: list[int] | None = None, chat_template_kwargs: dict | None = None):
        from krllm.data.tokens.chat_tokens import stop_ids as tokenizer_stop_ids

        if temperature <= 0:
            raise KrllmError("GRPO samples its completions: temperature must be > 0")
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.sampling = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
                                       repetition_penalty=repetition_penalty)
        self.stop_ids = list(stop_ids if stop_ids is not None else tokenizer_stop_ids(tokenizer))
        self.chat_template_kwargs = chat_template_kwargs or {}
        self.stats = RolloutStats()
        self._copy: PolicyCopy | None | bool = None  # False: no fast path for this policy
        self._engine: Engine | None = None
        self._engine_key: tuple | None = None

    # ------------------------------------------------------------------ prompts
    def prompt_ids(self, prompt) -> list[int]:
        """A conversational prompt through the chat template (+ generation prompt), a string as it is."""
        if isinstance(prompt, str):
            return list(self.tokenizer(prompt)["input_ids"])
        return generation_prompt_ids(self.tokenizer, prompt, **self.chat_template_kwargs)

    # ------------------------------------------------------------------ the engine
    def engine_for(self, policy, version, n_rows: int, max_len: int) -> Engine:
        """An engine over the policy's weights as of `version` (e.g. the optimizer step), with room for
        `n_rows` sequences of `max_len` tokens; rebuilt only when the version or the room changes."""
        if self._copy is None:
            try:
                self._copy = PolicyCopy(policy)
            except KrllmError:
                self._copy = False
        key = (version, n_rows, max_len)
        if self._engine is not None and self._engine_key == key:
            return self._engine
        t0 = time.perf_counter()
        if self._copy:
            self._copy.sync(policy)
            model = self._copy.model
        else:  # transformers' forward on the live policy (PEFT layers and all)
            model = policy
        limit = config_max_len(model.config)
        if limit is not None and max_len > limit:
            raise KrllmError(f"a prompt plus max_new_tokens={self.max_new_tokens} needs {max_len} tokens; the model "
                             f"holds {limit}: shorten the prompts or the completions")
        self._engine = Engine(model, max_batch=n_rows, max_seq_len=max_len, eos_ids=self.stop_ids)
        self._engine_key = key
        self.stats.refresh_s = time.perf_counter() - t0
        self.stats.path = f"krllm engine ({self._engine.runner.decode_path}" + (
            ", merged copy of the policy)" if self._copy else ", live policy via transformers)")
        return self._engine

    # ------------------------------------------------------------------ rollout_func
    @torch.no_grad()
    def generate(self, policy, prompts: list, version=None) -> dict:
        """{"prompt_ids", "completion_ids", "logprobs"}: one sampled completion per prompt."""
        ids = [self.prompt_ids(p) for p in prompts]
        max_len = max(map(len, ids)) + self.max_new_tokens + 1
        was_training = policy.training
        policy.eval()  # no dropout while sampling (the transformers path runs the policy itself)
        try:
            engine = self.engine_for(policy, version, len(ids), max_len)
            t0 = time.perf_counter()
            seqs = engine.generate(ids, self.sampling, max_new_tokens=self.max_new_tokens, logprobs=True)
            self.stats.generate_s = time.perf_counter() - t0
        finally:
            policy.train(was_training)
        completions = [s.output + ([s.stop_token] if s.stop_token is not None else []) for s in seqs]
        self.stats.completion_tokens = sum(map(len, completions))
        self.stats.calls += 1
        return {"prompt_ids": ids, "completion_ids": completions, "logprobs": [s.logprobs for s in seqs]}

    def __call__(self, prompts: list, trainer) -> dict:
        policy = trainer.accelerator.unwrap_model(trainer.model)
        out = self.generate(policy, prompts, version=trainer.state.global_step)
        metrics = getattr(trainer, "_metrics", None)  # TRL's per-mode metric lists, logged with its own
        if isinstance(metrics, dict):
            mode = "train" if trainer.model.training else "eval"
            metrics[mode]["rollout/generate_s"].append(self.stats.generate_s)
            metrics[mode]["rollout/refresh_s"].append(self.stats.refresh_s)
        self.stats.refresh_s = 0.0  # counted once, on the call that paid it
        return out
