"""Generation engine on token ids: prefill + KV-cache decode, sampling, stopping, batching.

It knows nothing about text. Sequences join the running batch between decode steps
(continuous batching): `step()` decodes one token for every running sequence and, in the same
forward, prefills up to `prefill_chunk` prompt tokens of admitted sequences (chunked prefill, as
vLLM does): a long prompt takes several steps while the running streams keep receiving tokens, and
a sequence's first token is sampled from the logits of its prompt's last chunk. Finished or
cancelled sequences free their slot at once.

The same loop serves every caller:
    engine = Engine(model, max_batch=8, max_seq_len=1024, eos_ids=[0, 3])
    outs = engine.generate([[5, 6], [7, 8, 9]], SamplingParams(temperature=0), max_new_tokens=32)
    for tok in engine.stream([5, 6], SamplingParams(temperature=0.8, seed=1)): ...
and `krllm.infer.scheduler.Scheduler` runs `step()` in a thread for the HTTP server.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import torch

from krllm.errors import KrllmError
from krllm.infer.config import PREFILL_CHUNK
from krllm.infer.sampling import SamplingParams, SamplingRows, sample
from krllm.model.config_facts import config_eos_ids, config_max_len

_GREEDY = SamplingParams(temperature=0)
# max_seq_len when neither the caller nor the model's config names a limit (models without
# positions, e.g. state-space ones, have none; the KV cache / state still grows with it).
DEFAULT_MAX_SEQ_LEN = 2048


KV_DTYPES = {"auto": None, "fp32": torch.float32, "fp16": torch.float16}


def make_runner(model, n_slots: int, max_seq_len: int, native: bool = True, kv_dtype: str = "auto"):
    """krllm's own runner (batched decode, the C step on CPU) for krllm's Llama; transformers' forward
    (krllm.infer.hf_runner) for every other causal LM. `runner.decode_path` says which one runs."""
    from krllm.model.llama import Llama

    if isinstance(model, Llama):
        from krllm.infer.runner import ModelRunner

        return ModelRunner(model, n_slots=n_slots, max_seq_len=max_seq_len, use_native=native,
                           kv_dtype=KV_DTYPES[kv_dtype])
    if kv_dtype != "auto":
        raise KrllmError(f"kv_dtype={kv_dtype!r} needs krllm's own Llama; {type(model).__name__} keeps "
                         "transformers' cache")
    from krllm.infer.hf_runner import TransformersRunner

    return TransformersRunner(model, n_slots=n_slots, max_seq_len=max_seq_len)


@dataclass(eq=False)
class Sequence:
    """One request in the engine. `output` grows by one token per step; stop tokens are not added."""

    prompt: list[int]
    sampling: SamplingParams
    max_new_tokens: int
    stop_ids: frozenset[int]
    id: int = 0
    output: list[int] = field(default_factory=list)
    slot: int | None = None
    prefilled: int = 0  # prompt tokens already in the slot's cache (chunked prefill)
    finish_reason: str | None = None  # "stop" (stop token / stop string), "length", "cancelled"
    generator: torch.Generator | None = None
    seen: torch.Tensor | None = None  # (V,) bool, only with a repetition penalty
    stop_token: int | None = None  # the stop token that ended it (not in `output`)
    # with add(logprobs=True): log p(token) under softmax(logits / temperature) for every output token
    # and then the stop token, if any (what a trainer's forward computes for the same tokens)
    logprobs: list[float] | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def prefilling(self) -> bool:
        """In a slot with part of its prompt still to prefill (not sampled yet)."""
        return self.slot is not None and self.prefilled < len(self.prompt)


@dataclass
class StepEvent:
    """What one `step()` did to one sequence: a new token (or None) and whether it just finished."""

    seq: Sequence
    token: int | None
    finished: bool


class Engine:
    """Owns the model runner, the cache slots and the queue of waiting sequences. Not thread-safe:
    one thread calls add/cancel/step (see Scheduler for the threaded server loop)."""

    def __init__(self, model, max_batch: int = 8, max_seq_len: int | None = None,
                 eos_ids: Iterable[int] | None = None, native: bool = True,
                 prefill_chunk: int | None = PREFILL_CHUNK, kv_dtype: str = "auto"):
        """model: krllm's Llama or any transformers causal LM (see make_runner).
        max_seq_len: None = the config's limit (max_position_embeddings), else DEFAULT_MAX_SEQ_LEN.
        eos_ids: None = the config's eos_token_id (int, list or none).
        native=False keeps decoding on the PyTorch path even where the C step is available.
        prefill_chunk: prompt tokens prefilled per step beside the decode rows (a step's time, and so the
        gap between two tokens of every running stream, grows with it); None or 0 = each new
        prompt whole in the step that admits it (also what runners without `step`, e.g. transformers'
        models, always do).
        kv_dtype: the KV cache's dtype: "auto" (ModelRunner._default_kv_dtype: the model's on GPUs; on CPU
        fp16 for bf16 weights where the C step does all attention, else fp32), "fp32", or "fp16" (half
        the bytes each decode step reads at long contexts, as llama.cpp's default)."""
        cfg = model.config
        max_seq_len = max_seq_len or config_max_len(cfg) or DEFAULT_MAX_SEQ_LEN
        if kv_dtype not in KV_DTYPES:
            raise KrllmError(f"kv_dtype must be one of {', '.join(KV_DTYPES)} (got {kv_dtype!r})")
        if prefill_chunk is not None and prefill_chunk < 0:
            raise KrllmError(f"prefill_chunk must be >= 0 tokens (got {prefill_chunk})")
        self.runner = make_runner(model, n_slots=max_batch, max_seq_len=max_seq_len, native=native, kv_dtype=kv_dtype)
        self.prefill_chunk = prefill_chunk if prefill_chunk and hasattr(self.runner, "step") else None
        self.eos_ids = frozenset(config_eos_ids(cfg) if eos_ids is None else eos_ids)
        self.max_batch = max_batch
        self.waiting: deque[Sequence] = deque()
        self.slots: list[Sequence | None] = [None] * max_batch
        self._ids = itertools.count(1)
        self._rows: SamplingRows | None = None  # per-row sampling state, rebuilt when the batch changes
        self._rows_key: tuple | None = None
        self._tokens = torch.zeros(max_batch, dtype=torch.long, device=self.runner.device)  # (N,) last tokens
        # Called right before each forward pass (prefill or decode), which mostly runs without the
        # GIL (the C step, torch ops): the server hands over the previous step's tokens here, so its
        # event loop streams them while the forward runs instead of afterwards, competing for the GIL.
        self.before_forward: Callable[[], None] | None = None

    @property
    def max_seq_len(self) -> int:
        return self.runner.max_seq_len

    @property
    def vocab_size(self) -> int:
        return self.runner.vocab_size

    # ------------------------------------------------------------------ requests
    def add(self, prompt: list[int], sampling: SamplingParams = _GREEDY, max_new_tokens: int = 128,
            stop_ids: Iterable[int] | None = None, logprobs: bool = False) -> Sequence:
        """Queue a prompt; it starts at the next `step()` with a free slot.

        stop_ids: token ids that end generation (default: the model's EOS ids; pass () to ignore EOS).
        logprobs: record each chosen token's log-probability (`Sequence.logprobs`), for RL rollouts.
        """
        prompt = [int(t) for t in prompt]
        if not prompt:
            raise KrllmError("empty prompt: give at least one token id")
        if max_new_tokens < 1:
            raise KrllmError(f"max_new_tokens must be >= 1 (got {max_new_tokens})")
        if len(prompt) >= self.max_seq_len:
            raise KrllmError(f"prompt has {len(prompt)} tokens; the engine holds at most "
                             f"max_seq_len={self.max_seq_len} (prompt + output)")
        bad = [t for t in prompt if not 0 <= t < self.vocab_size]
        if bad:
            raise KrllmError(f"prompt token id {bad[0]} is outside the vocabulary (0..{self.vocab_size - 1})")
        seq = Sequence(prompt=prompt, sampling=sampling, max_new_tokens=max_new_tokens,
                       stop_ids=frozenset(self.eos_ids if stop_ids is None else stop_ids), id=next(self._ids))
        seq.generator = sampling.make_generator(self.runner.device)
        seq.logprobs = [] if logprobs else None
        if sampling.repetition_penalty != 1.0:
            seq.seen = torch.zeros(self.vocab_size, dtype=torch.bool, device=self.runner.device)
            seq.seen[torch.tensor(prompt)] = True
        self.waiting.append(seq)
        return seq

    def cancel(self, seq: Sequence, reason: str = "cancelled") -> None:
        """Stop a sequence now (client gone, stop string seen): frees its slot for the next request."""
        if seq.finished:
            return
        seq.finish_reason = reason
        if seq.slot is not None:
            self._release(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)

    @property
    def running(self) -> list[Sequence]:
        return [s for s in self.slots if s is not None]

    def has_work(self) -> bool:
        return bool(self.waiting) or any(s is not None for s in self.slots)

    # ------------------------------------------------------------------ the loop
    def step(self) -> list[StepEvent]:
        """Decode one token for each running sequence and prefill the next prompt chunks (admitting
        waiting sequences into free slots, in order, while the step's prompt-token budget lasts)."""
        if self.prefill_chunk is None:
            return self._step_whole_prompts()
        events: list[StepEvent] = []
        decoding = [s for s in self.running if not s.prefilling]
        plan = self._plan_chunks()
        if not plan:
            return self._decode(decoding) if decoding else events
        for i, (seq, start, n) in enumerate(plan):
            with_decode = i == 0 and bool(decoding)
            n_rows, active = self._decode_rows(decoding) if with_decode else (0, [])
            last = start + n == len(seq.prompt)
            if self.before_forward is not None:
                self.before_forward()
            logits, first = self.runner.step(self._tokens[:n_rows], n_rows, active,
                                             (seq.slot, start, seq.prompt[start:start + n], last))
            seq.prefilled = start + n
            if with_decode:  # sampled before the next call: the logits may live in the runner's buffer
                events.extend(self._sample_decoded(decoding, logits, n_rows))
            if last and not seq.finished:
                events.append(self._sample_first(seq, first))
        return events

    def _plan_chunks(self) -> list[tuple[Sequence, int, int]]:
        """This step's prompt pieces (sequence, start, tokens) within the budget: sequences part-way
        through their prompt first (in admission order), then waiting ones into free slots."""
        budget, plan = self.prefill_chunk, []
        for seq in sorted((s for s in self.slots if s is not None and s.prefilling), key=lambda s: s.id):
            n = min(len(seq.prompt) - seq.prefilled, budget)
            plan.append((seq, seq.prefilled, n))
            budget -= n
            if budget == 0:
                return plan
        while budget and self.waiting and None in self.slots:
            seq = self.waiting.popleft()
            seq.slot = self.slots.index(None)  # lowest free slot keeps the decoded rows contiguous
            self.slots[seq.slot] = seq
            n = min(len(seq.prompt), budget)
            plan.append((seq, 0, n))
            budget -= n
        return plan

    def _sample_first(self, seq: Sequence, logits: torch.Tensor) -> StepEvent:
        """A sequence's first token, from the logits (V,) of its prompt's last position."""
        rows = SamplingRows.build([seq.sampling], self.vocab_size, self.runner.device, [seq.generator])
        if seq.seen is not None:
            rows.seen = seq.seen[None]
        token = sample(logits[None], rows)
        self._record_logprobs([seq], logits[None], token)
        return self._accept(seq, int(token[0]))

    def _step_whole_prompts(self) -> list[StepEvent]:
        """step() without chunks: each admitted prompt whole (one prefill), then one decode forward."""
        events: list[StepEvent] = []
        decoding = self.running  # sequences already running decode this step; new ones prefill
        while self.waiting and None in self.slots:
            seq = self.waiting.popleft()
            slot = self.slots.index(None)  # lowest free slot keeps the decoded rows contiguous
            seq.slot = slot
            self.slots[slot] = seq
            if self.before_forward is not None:
                self.before_forward()
            logits = self.runner.prefill(slot, seq.prompt)  # (V,)
            seq.prefilled = len(seq.prompt)
            events.append(self._sample_first(seq, logits))
        if decoding:
            events.extend(self._decode(decoding))
        return events

    def _decode(self, seqs: list[Sequence]) -> list[StepEvent]:
        n_rows, active = self._decode_rows(seqs)
        if self.before_forward is not None:
            self.before_forward()
        logits = self.runner.decode(self._tokens[:n_rows], n_rows, active)  # (n_rows, V)
        return self._sample_decoded(seqs, logits, n_rows)

    def _decode_rows(self, seqs: list[Sequence]) -> tuple[int, list[bool]]:
        """Rows 0..n_rows-1 of a decode forward (row = slot) and which are active; fills `_tokens`."""
        n_rows = max(s.slot for s in seqs) + 1
        active = [False] * n_rows
        for s in seqs:
            active[s.slot] = True
            self._tokens[s.slot] = s.output[-1] if s.output else s.prompt[-1]
        return n_rows, active

    def _sample_decoded(self, seqs: list[Sequence], logits: torch.Tensor, n_rows: int) -> list[StepEvent]:
        """Next token of each decoded sequence from the forward's logits (n_rows, V), row = slot."""
        rows = self._sampling_rows(seqs, n_rows)
        next_ids = sample(logits, rows)
        wanting = [s for s in seqs if s.logprobs is not None]
        if wanting:
            at = [s.slot for s in wanting]
            self._record_logprobs(wanting, logits[at], next_ids[at])
        next_ids = next_ids.tolist()
        return [self._accept(s, next_ids[s.slot]) for s in seqs]

    @staticmethod
    def _record_logprobs(seqs: list[Sequence], logits: torch.Tensor, tokens: torch.Tensor) -> None:
        """Append log softmax(logits / T)[token] to each sequence that asked for log-probabilities:
        logits (n, V), tokens (n,). Temperature 0 (greedy) scores the plain logits (T = 1)."""
        if seqs[0].logprobs is None:
            return
        temps = torch.tensor([s.sampling.temperature or 1.0 for s in seqs], device=logits.device)
        logp = torch.log_softmax(logits.float() / temps[:, None], dim=-1)  # (n, V)
        for s, lp in zip(seqs, logp.gather(1, tokens.view(-1, 1))[:, 0].tolist()):
            s.logprobs.append(lp)

    def _sampling_rows(self, seqs: list[Sequence], n_rows: int) -> SamplingRows:
        """Per-row sampling tensors for slots 0..n_rows-1; rebuilt only when the decoded sequences change.
        Rows of other slots (free, or a sequence still prefilling or just sampled its first token) are
        greedy placeholders: they must not draw from that sequence's generator, so that a seeded
        request draws the same tokens however the batch around it changes."""
        decoded = {s.id for s in seqs}
        occupants = [s if s is not None and s.id in decoded else None for s in self.slots[:n_rows]]
        key = tuple(s.id if s is not None else 0 for s in occupants)
        if key != self._rows_key:
            params = [s.sampling if s is not None else _GREEDY for s in occupants]
            gens = [s.generator if s is not None else None for s in occupants]
            rows = SamplingRows.build(params, self.vocab_size, self.runner.device, gens)
            if rows.seen is not None:
                for i, s in enumerate(occupants):
                    if s is not None and s.seen is not None:
                        rows.seen[i] = s.seen
            self._rows, self._rows_key = rows, key
        return self._rows

    def _accept(self, seq: Sequence, token: int) -> StepEvent:
        """Record a sampled token and decide whether the sequence is done."""
        if token in seq.stop_ids:
            seq.finish_reason, seq.stop_token = "stop", token
            self._release(seq)
            return StepEvent(seq, None, True)
        seq.output.append(token)
        if seq.seen is not None:
            seq.seen[token] = True
            if self._rows is not None and self._rows.seen is not None and seq.slot < len(self._rows.params):
                self._rows.seen[seq.slot, token] = True
        total = len(seq.prompt) + len(seq.output)
        if len(seq.output) >= seq.max_new_tokens or total >= self.max_seq_len:
            seq.finish_reason = "length"
            self._release(seq)
            return StepEvent(seq, token, True)
        return StepEvent(seq, token, False)

    def _release(self, seq: Sequence) -> None:
        if seq.slot is not None and self.slots[seq.slot] is seq:
            self.slots[seq.slot] = None
            self.runner.free(seq.slot)
        seq.slot = None

    # ------------------------------------------------------------------ convenience
    def generate(self, prompts: list[list[int]], sampling: SamplingParams | list[SamplingParams] = _GREEDY,
                 max_new_tokens: int = 128, stop_ids: Iterable[int] | None = None,
                 logprobs: bool = False) -> list[Sequence]:
        """Generate for several prompts (any lengths) batched together; returns finished sequences in order."""
        params = sampling if isinstance(sampling, list) else [sampling] * len(prompts)
        seqs = [self.add(p, sp, max_new_tokens, stop_ids, logprobs) for p, sp in zip(prompts, params)]
        while not all(s.finished for s in seqs):
            self.step()
        return seqs

    def stream(self, prompt: list[int], sampling: SamplingParams = _GREEDY, max_new_tokens: int = 128,
               stop_ids: Iterable[int] | None = None) -> Iterator[int]:
        """Yield generated token ids one by one. Closing the generator early cancels the sequence.

        The sequence (with `finish_reason`) is the generator's return value (StopIteration.value).
        """
        seq = self.add(prompt, sampling, max_new_tokens, stop_ids)
        try:
            while not seq.finished:
                for ev in self.step():
                    if ev.seq is seq and ev.token is not None:
                        yield ev.token
            return seq
        finally:
            self.cancel(seq)
