"""The eval stage: every model (base, fine-tuned, more) on perplexity, NPC chat loss, math exact match, samples.

    krllm eval -c configs/eval/demo_ko.yaml --set base=runs/demo_ko/pretrain/hf --set tuned=runs/demo_ko/sft/merged
    krllm eval -c configs/eval/demo_ko.yaml --set base=... --set models.math_grpo=runs/demo_ko/math_grpo/merged

Writes `<out_dir>/eval.json` (+ config.yaml, samples.md) atomically. Every metric is computed for each
model that is given (`base`, `tuned`, then `models` in order), with the same data, so the columns of the
report compare like with like. Held-out sets: records whose user turns also appear in a training set
named by `holdout_from` are dropped (and counted), so the numbers are not memorization.
"""

from __future__ import annotations

import json
import re
import time
from typing import Literal

from pydantic import Field, field_validator, model_validator

from krllm.config import StrictModel, write_resolved
from krllm.errors import KrllmError
from krllm.runs import atomic_dir, write_json


class TrainingSet(StrictModel):
    data: str = Field(description="the training data spec (JSONL path or builtin:...) to hold out from")
    n: int | None = Field(None, gt=0, description="how many records it used (builtin: generated count)")
    seed: int = 0
    kind: Literal["sft", "dpo", "grpo"] | None = Field(
        None, description="record kind the training data is read as; None = the eval set's own (sft for npc, "
        "grpo for math)")

    def as_config(self) -> dict:
        """The mapping a config holds (`kind` only when set, so configs without it stay as they were)."""
        return self.model_dump(mode="json", exclude={"kind"} if self.kind is None else None)


def _as_list(v):
    """`holdout_from` may be one {data, n, seed} mapping, a list of them, or null."""
    if v is None:
        return []
    return [v] if isinstance(v, dict) else v


class PerplexitySection(StrictModel):
    enabled: bool = True
    shards: str | None = Field(None, description="token shards directory (krllm data prepare); None = skip")
    split: str = Field("val", description="split of the shards to score")
    seq_len: int = Field(256, ge=8, description="tokens per window")
    max_tokens: int = Field(50_000, ge=1, description="score at most this many tokens of the split")


class ChatLossSection(StrictModel):
    enabled: bool = True
    data: str = Field("builtin:npc", description="chat/instruction JSONL or builtin:npc")
    n: int = Field(64, ge=1, description="conversations (before dropping overlap with training)")
    seed: int = Field(9001, description="generator seed for builtin data (differs from training's)")
    max_length: int = Field(1024, gt=8)
    holdout_from: list[TrainingSet] = Field(default_factory=list, description="training sets to drop overlap with")

    _list = field_validator("holdout_from", mode="before")(_as_list)


class MathSection(StrictModel):
    enabled: bool = True
    data: str = Field("builtin:math:ko", description="GRPO-style JSONL {prompt, ground_truth_answer}, "
                      "builtin:math[:ko|en|mixed], or a Hub dataset hf:NAME[:CONFIG][@SPLIT]")
    columns: dict[str, str] = Field(default_factory=dict, description="rename file / Hub columns to our keys, e.g. "
                                    "{question: prompt, answer: ground_truth_answer} for hf:openai/gsm8k:main@test")
    n: int = Field(40, ge=1, description="problems (before dropping overlap with training)")
    seed: int = Field(9002)
    max_new_tokens: int = Field(96, ge=1, description="answer length limit (tokens)")
    holdout_from: list[TrainingSet] = Field(default_factory=list, description="training sets to drop overlap with")
    samples: int = Field(0, ge=0, description="sampled answers per problem for pass@k (0 = greedy exact match only)")
    k: list[int] = Field(default_factory=lambda: [1], description="pass@k for each k (each <= samples)")
    temperature: float = Field(0.8, gt=0, description="sampling temperature of the pass@k answers")
    top_p: float = Field(0.95, gt=0, le=1, description="nucleus sampling of the pass@k answers")

    _list = field_validator("holdout_from", mode="before")(_as_list)

    @model_validator(mode="after")
    def _ks(self):
        if self.samples and any(not 1 <= k <= self.samples for k in self.k):
            raise ValueError(f"every k of pass@k must be between 1 and samples ({self.samples}); got k={self.k}")
        return self


class TranslateSection(StrictModel):
    enabled: bool = Field(False, description="BLEU / chrF / TER of greedy translations (krllm.eval.translate)")
    data: str = Field("builtin:ko-en-help:heldout", description="pairs: JSONL with the src/tgt codes as keys, "
                      "builtin:ko-en-help[:train|heldout] or hf:NAME[:CONFIG][@SPLIT] (e.g. "
                      "hf:Helsinki-NLP/opus-100:en-ko@test online)")
    src: str = Field("ko", description="source language code (and its key in the pairs)")
    tgt: str = Field("en", description="target language code (and its key in the pairs)")
    src_key: str | None = Field(None, description="key of the source text when it is not `src`")
    tgt_key: str | None = Field(None, description="key of the reference when it is not `tgt`")
    n: int | None = Field(100, ge=1, description="pairs (a seeded sample for builtin:, the first n of a file); "
                          "null = all")
    seed: int = 0
    prompt: str | None = Field(None, description="prompt template with {text}; None = the SFT records' instruction "
                               "(krllm.eval.translate.default_template)")
    max_new_tokens: int = Field(96, ge=1, description="tokens per translation")
    tokenize: str | None = Field(None, description="BLEU tokenizer; None = sacrebleu's choice for tgt (13a for en)")
    examples: int = Field(5, ge=0, description="sample translations shown in the report")


class SamplesSection(StrictModel):
    enabled: bool = True
    prompts: list[str] | None = Field(None, description="user prompts; None = krllm.eval.samples.NPC_PROMPTS")
    max_new_tokens: int = Field(64, ge=1)


RESERVED_ROLES = ("base", "tuned", "prompt")  # `prompt` is a key of each eval.json sample next to the roles


class EvalConfig(StrictModel):
    out_dir: str = Field("runs/eval", description="where eval.json goes (replaced atomically)")
    base: str | None = Field(None, description="base model: HF directory (e.g. runs/x/pretrain/hf)")
    tuned: str | None = Field(None, description="fine-tuned model: merged HF directory or PEFT adapter directory")
    models: dict[str, str] = Field(default_factory=dict, description="more models, role name -> model directory, "
                                   "evaluated in this order after base and tuned (e.g. math_sft, dpo, grpo)")
    device: str = Field("cpu", description="cpu, cuda, mps or auto")
    dtype: Literal["fp32", "bf16", "fp16", "int8", "int4"] = Field(
        "fp32", description="weights while evaluating: fp32 (numbers that do not depend on the CPU), or bf16 / "
                            "fp16 / int8 / int4 to measure what that precision costs (int: quantized at load)")
    batch_size: int = Field(8, ge=1, description="sequences per forward pass (perplexity, losses)")
    decode_batch: int = Field(64, ge=1, description="answers decoded together by the engine (math, samples): all "
                              "40 demo problems in one batched pass is ~2x faster on CPU than 8 at a time; "
                              "the KV cache grows with it")
    system: str | None = Field(None, description="system prompt for chat prompts (as used in SFT)")
    perplexity: PerplexitySection = Field(default_factory=PerplexitySection)
    npc: ChatLossSection = Field(default_factory=ChatLossSection)
    math: MathSection = Field(default_factory=MathSection)
    samples: SamplesSection = Field(default_factory=SamplesSection)
    translate: TranslateSection = Field(default_factory=TranslateSection)

    @field_validator("models")
    @classmethod
    def _roles(cls, v: dict[str, str]) -> dict[str, str]:
        for role, path in v.items():
            if role in RESERVED_ROLES or not re.fullmatch(r"[a-z][a-z0-9_-]*", role):
                raise ValueError(f"role {role!r}: use lowercase letters, digits, '-', '_', not one of {RESERVED_ROLES}")
            if not str(path).strip():
                raise ValueError(f"{role}: empty model path")
        return v

    def roles(self) -> dict[str, str]:
        """Every model to evaluate, role -> directory, in evaluation order."""
        return {**{k: v for k, v in (("base", self.base), ("tuned", self.tuned)) if v}, **self.models}


def _prompt_key(record: dict) -> str | None:
    """Identity of a record's prompt, whatever its kind (sft messages, dpo/grpo prompt): its user turns."""
    turns = record.get("prompt") or record.get("messages") or []
    users = [m["content"] for m in turns if m.get("role") == "user"]
    return json.dumps(users, ensure_ascii=False) if users else None


def _held_out(records: list[dict], kind: Literal["sft", "grpo"], train: list[TrainingSet],
              system: str | None) -> tuple[list[dict], int]:
    """Drop records whose user turns are those of a record in any of the training sets (each read as its
    own record kind: an SFT, DPO or GRPO set of the same problems matches); return (kept, dropped)."""
    if not train:
        return records, 0
    from krllm.data.sets.records import load_examples

    seen = {_prompt_key(r) for t in train
            for r in load_examples(t.data, t.kind or kind, n=t.n, seed=t.seed, system=system)} - {None}
    kept = [r for r in records if _prompt_key(r) not in seen]
    return kept, len(records) - len(kept)


class _Progress:
    """rich progress over the eval's units of work (one per model x metric)."""

    def __init__(self, total: int):
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.p = Progress(TextColumn("eval {task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                          TimeElapsedColumn(), TimeRemainingColumn())
        self.task = self.p.add_task("", total=total)

    def __enter__(self):
        self.p.start()
        return self

    def __exit__(self, *exc):
        self.p.stop()

    def step(self, what: str, result: str) -> None:
        self.p.update(self.task, advance=1, description=what)
        self.p.console.print(f"  {what}: {result}")


def run_eval(cfg: EvalConfig) -> dict:
    """Evaluate every model of cfg (base, tuned, models); write eval.json; return its content."""
    from krllm.device import pick_device
    from krllm.model.load import load

    models = cfg.roles()
    if not models:
        raise KrllmError("nothing to evaluate: set base, tuned and/or models.<role> to a model directory")
    device = pick_device(cfg.device)
    t0 = time.time()
    data = _load_data(cfg)
    units = len(models) * sum(bool(x) for x in (data["shards"] is not None, data["npc"], data["math"],
                                                 data["math"] and cfg.math.samples, data["prompts"],
                                                 data["translate"]))
    out: dict = {"models": {}, "perplexity": {}, "npc": {}, "math": {}, "samples": [],
                 "data": data["meta"], "device": str(device)}
    if data["translate"]:
        out["translate"] = {}
    answers: dict[str, list[dict]] = {}
    tokens_scored = 0
    with _Progress(units) as prog:
        for role, path in models.items():
            lm = load(path, device=device, dtype=cfg.dtype)
            out["models"][role] = {"path": str(path), "source": lm.source, "params": lm.num_parameters,
                                   "dtype": cfg.dtype}
            tokens_scored += _eval_one(cfg, lm, role, data, out, answers, prog)
            del lm  # free this model before loading the next
    if data["prompts"]:
        out["samples"] = [{"prompt": p, **{role: answers[role][i]["answer"] for role in models}}
                          for i, p in enumerate(data["prompts"])]
    wall = time.time() - t0
    out.update(wall_s=round(wall, 2), tokens_scored=tokens_scored,
               tokens_per_s=round(tokens_scored / wall, 1) if wall > 0 else None)
    with atomic_dir(cfg.out_dir) as tmp:
        write_resolved(cfg, tmp / "config.yaml")
        write_json(tmp / "eval.json", out)
        (tmp / "samples.md").write_text(samples_markdown(out), encoding="utf-8")
        if data["translate"]:
            from krllm.eval.translate import samples_markdown as translations_markdown

            (tmp / "translations.md").write_text(translations_markdown(
                {"translate": out["translate"], "data": data["meta"]["translate"]}, list(models)), encoding="utf-8")
    return out


def _load_data(cfg: EvalConfig) -> dict:
    """Every eval set, loaded once and shared by every model."""
    from krllm.data.sets.records import load_examples

    meta: dict = {}
    shards = None
    if cfg.perplexity.enabled and cfg.perplexity.shards:
        from krllm.data.tokens.shards import TokenShards

        shards = TokenShards(cfg.perplexity.shards, cfg.perplexity.split)
        meta["perplexity"] = {"shards": cfg.perplexity.shards, "split": cfg.perplexity.split,
                              "split_tokens": len(shards)}
    npc: list[dict] = []
    if cfg.npc.enabled:
        recs = load_examples(cfg.npc.data, "sft", n=cfg.npc.n, seed=cfg.npc.seed, system=cfg.system)
        chats = [r for r in recs if "messages" in r]
        if not chats:  # a plain-text set (`{"text": ...}` rows) has nothing to score as a conversation
            raise KrllmError(f"npc.data {cfg.npc.data}: no chat records in the {len(recs)} rows read (all plain "
                             "text); the chat loss needs {\"messages\": [...]} or {instruction, output} rows")
        recs = chats
        npc, dropped = _held_out(recs, "sft", cfg.npc.holdout_from, cfg.system)
        if not npc:
            raise KrllmError(f"npc: every one of the {len(recs)} eval conversations is in the training set; "
                             "change npc.seed or npc.data")
        meta["npc"] = {"data": cfg.npc.data, "n": len(npc), "dropped_in_training": dropped}
    math: list[dict] = []
    if cfg.math.enabled:
        recs = load_examples(cfg.math.data, "grpo", n=cfg.math.n, seed=cfg.math.seed, system=cfg.system,
                             columns=cfg.math.columns)
        math, dropped = _held_out(recs, "grpo", cfg.math.holdout_from, cfg.system)
        if not math:
            raise KrllmError(f"math: every one of the {len(recs)} problems is in the training set; change math.seed")
        meta["math"] = {"data": cfg.math.data, "n": len(math), "dropped_in_training": dropped}
    prompts: list[str] = []
    if cfg.samples.enabled:
        from krllm.eval.samples import NPC_PROMPTS

        prompts = list(cfg.samples.prompts if cfg.samples.prompts is not None else NPC_PROMPTS)
    pairs: list[dict] = []
    if cfg.translate.enabled:
        from krllm.eval.translate import default_template, load_pairs

        t = cfg.translate
        pairs = load_pairs(t.data, t.src, t.tgt, n=t.n, seed=t.seed, src_key=t.src_key, tgt_key=t.tgt_key)
        meta["translate"] = {"data": t.data, "src": t.src, "tgt": t.tgt, "n": len(pairs),
                             "template": t.prompt or default_template(t.src, t.tgt), "examples": t.examples}
    return {"shards": shards, "npc": npc, "math": math, "prompts": prompts, "translate": pairs, "meta": meta}


def _eval_one(cfg: EvalConfig, lm, role: str, data: dict, out: dict, answers: dict, prog: _Progress) -> int:
    """All metrics of one model into `out`; returns the tokens it scored or generated."""
    from krllm.eval.generate import chat_prompt_ids, greedy_answers
    from krllm.eval.math import exact_match, is_correct
    from krllm.eval.perplexity import labeled_loss, token_perplexity

    tokens = 0
    if data["shards"] is not None:
        p = cfg.perplexity
        r = token_perplexity(lm.model, data["shards"], seq_len=p.seq_len, max_tokens=p.max_tokens,
                             batch_size=cfg.batch_size, device=lm.device)
        out["perplexity"][role] = r
        tokens += r["tokens"]
        prog.step(f"{role} perplexity", f"loss {r['loss']:.4f}, ppl {r['ppl']:.2f} on {r['tokens']:,} tokens")
    if data["npc"]:
        from krllm.data.tokens.chat_tokens import tokenize_chat

        examples = [tokenize_chat(lm.tokenizer, r["messages"]) for r in data["npc"]]
        examples = [(ids[:cfg.npc.max_length], labels[:cfg.npc.max_length]) for ids, labels in examples]
        pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
        r = labeled_loss(lm.model, examples, pad_id=pad, batch_size=cfg.batch_size, device=lm.device)
        out["npc"][role] = r
        tokens += r["tokens"]
        prog.step(f"{role} NPC loss", f"{r['loss']:.4f} over {r['tokens']:,} assistant tokens")
    if data["math"]:
        questions = [r["prompt"][-1]["content"] for r in data["math"]]
        got = greedy_answers(lm, questions, max_new_tokens=cfg.math.max_new_tokens, system=cfg.system,
                             batch_size=cfg.decode_batch)
        em = exact_match([g["answer"] for g in got], [r["ground_truth_answer"] for r in data["math"]])
        em["examples"] = [{"question": q, "truth": r["ground_truth_answer"], "answer": g["answer"],
                           "correct": is_correct(g["answer"], r["ground_truth_answer"])}
                          for q, r, g in zip(questions, data["math"], got)]
        out["math"][role] = em
        tokens += sum(g["tokens"] for g in got) + sum(len(chat_prompt_ids(lm.tokenizer, q, cfg.system))
                                                     for q in questions)
        prog.step(f"{role} math", f"exact match {em['correct']}/{em['n']} = {em['accuracy']:.1%}")
        if cfg.math.samples:
            tokens += _pass_at_k(cfg, lm, role, questions, data["math"], em, prog)
    if data["translate"]:
        tokens += _translate(cfg, lm, role, data, out, prog)
    if data["prompts"]:
        got = greedy_answers(lm, data["prompts"], max_new_tokens=cfg.samples.max_new_tokens, system=cfg.system,
                             batch_size=cfg.decode_batch)
        answers[role] = got
        tokens += sum(g["tokens"] for g in got)
        prog.step(f"{role} samples", f"{len(got)} answers, first: {got[0]['answer'][:60]!r}")
    return tokens


def _pass_at_k(cfg: EvalConfig, lm, role: str, questions: list[str], problems: list[dict], em: dict,
               prog: _Progress) -> int:
    """pass@k of sampled answers into em["pass_at_k"]; returns the tokens generated."""
    from krllm.eval.generate import sampled_answers
    from krllm.eval.passk import math_pass_at_k

    m = cfg.math
    sampled = sampled_answers(lm, questions, m.samples, temperature=m.temperature, top_p=m.top_p, seed=m.seed,
                              max_new_tokens=m.max_new_tokens, system=cfg.system, batch_size=cfg.decode_batch)
    pk = math_pass_at_k([[a["answer"] for a in s] for s in sampled], [r["ground_truth_answer"] for r in problems], m.k)
    em["pass_at_k"] = {**pk, "temperature": m.temperature, "top_p": m.top_p}
    prog.step(f"{role} pass@k", ", ".join(f"{k} {v:.1%}" for k, v in pk.items() if k.startswith("pass@")))
    return sum(a["tokens"] for s in sampled for a in s)


def _translate(cfg: EvalConfig, lm, role: str, data: dict, out: dict, prog: _Progress) -> int:
    """BLEU / chrF / TER of this model's greedy translations into out["translate"][role]."""
    from krllm.eval.translate import render_prompt, score_translations, translate_local

    t, pairs = cfg.translate, data["translate"]
    prompts = [render_prompt(data["meta"]["translate"]["template"], p["src"]) for p in pairs]
    got = translate_local(lm, prompts, t.max_new_tokens, cfg.decode_batch, cfg.system)
    r = score_translations(pairs, got, t.tgt, t.tokenize)
    out["translate"][role] = r
    prog.step(f"{role} translate", f"BLEU {r['bleu']:.2f}, chrF {r['chrf']:.2f}, TER {r['ter']:.2f} on {r['n']} pairs")
    return sum(g["tokens"] for g in got) + sum(g["prompt_tokens"] for g in got)


def samples_markdown(result: dict) -> str:
    """The sample answers as Markdown (also embedded in the report card)."""
    roles = list(result.get("models", {}))
    lines = ["# Sample answers (greedy)", ""]
    for i, s in enumerate(result.get("samples", []), 1):
        lines += [f"## Prompt {i}", "", "```text", s["prompt"], "```", ""]
        for role in roles:
            lines += [f"**{role}**:", "", "```text", s.get(role, "") or "(empty)", "```", ""]
    return "\n".join(lines)

