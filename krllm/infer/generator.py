"""The Python API: text in, text out, on krllm's engine (the one `krllm serve` runs); `krllm generate`
and `krllm chat` are built on it.

    from krllm.infer.generator import Generator

    gen = Generator.from_pretrained("runs/demo_ko/sft")          # HF dir, adapter dir or run dir
    gen.generate("오늘 날씨가", max_length=100, temperature=0.8, top_p=0.95)    # -> the continuation
    for piece in gen.stream("옛날 옛적에", seed=1): print(piece, end="")        # text as it is decoded
    gen.chat([{"role": "user", "content": "안녕하세요"}], temperature=0)         # the assistant's reply

`max_length` is the number of NEW tokens (the prompt does not count, unlike transformers'
`max_length`); generation also ends at a stop id (`lm.stop_ids`), at a stop string, or when prompt +
output fill the engine's `max_seq_len` (default: the model's context, at most 8192 tokens). No
generation loop lives here: it is `Engine` (prefill, KV cache, sampling, batching) plus `TextStream`
(incremental UTF-8-safe detokenization, stop strings).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from krllm.errors import KrllmError
from krllm.infer.engine import Engine
from krllm.infer.sampling import SamplingParams
from krllm.infer.startup import describe, make_engine
from krllm.infer.textstream import TextStream
from krllm.model.load import LoadedModel, load

MAX_CACHE_TOKENS = 8192  # tokens per sequence when the caller does not say (prompt + output)


def text_prompt_ids(lm: LoadedModel, prompt: str) -> list[int]:
    """Raw text -> ids (no special tokens); an empty prompt starts from BOS (id 0 without one)."""
    return lm.encode(prompt) or [lm.tokenizer.bos_token_id or 0]


@dataclass
class Completion:
    """One finished generation: the text (stop string and stop token excluded) and why it ended."""

    text: str
    tokens: int  # new tokens generated (a stop token is not counted)
    finish_reason: str  # "stop" (stop id or stop string) or "length"


class Generator:
    """A loaded model + an engine sized for it. Not thread-safe (one engine, one caller)."""

    def __init__(self, lm: LoadedModel, max_batch: int = 1, max_seq_len: int = 0):
        """max_batch: prompts decoded together by `complete`; max_seq_len: prompt + output tokens per
        sequence, which sizes the KV cache (0 = the model's context length, at most MAX_CACHE_TOKENS:
        a 128K-context model would otherwise reserve gigabytes of cache for a short chat)."""
        self.lm = lm
        limit = lm.context_length or MAX_CACHE_TOKENS
        self.engine: Engine = make_engine(lm, max_batch=max_batch,
                                          max_seq_len=max_seq_len or min(limit, MAX_CACHE_TOKENS))

    @classmethod
    def from_pretrained(cls, path, *, base=None, device: str = "auto", dtype: str | None = "auto",
                        name: str | None = None, max_batch: int = 1, max_seq_len: int = 0) -> "Generator":
        """Load `path` (HF model dir, PEFT adapter dir or run dir) with `krllm.model.load.load`.

        Defaults are `krllm generate`'s: device auto, dtype auto (bf16 where the device multiplies
        it natively, else fp32; None keeps the saved dtype).
        """
        return cls(load(path, base=base, device=device, dtype=dtype, name=name),
                   max_batch=max_batch, max_seq_len=max_seq_len)

    def describe(self) -> str:
        """The start-up line the CLI prints (path, dtype and why, device, decode path, stop ids)."""
        return describe(self.lm, self.engine)

    # ------------------------------------------------------------------ prompts
    def encode(self, prompt: str) -> list[int]:
        """Raw text -> ids (no special tokens); an empty prompt starts from BOS."""
        return text_prompt_ids(self.lm, prompt)

    def encode_chat(self, messages: list[dict]) -> list[int]:
        """[{"role", "content"}] -> ids with the chat template and the assistant's generation prompt."""
        return self.lm.encode_chat(messages)

    @staticmethod
    def sampling(temperature: float = 0.8, top_p: float = 0.95, top_k: int = 0, min_p: float = 0.0,
                 repetition_penalty: float = 1.0, seed: int | None = None) -> SamplingParams:
        """SamplingParams, with a bad value reported as a KrllmError. temperature 0 = greedy."""
        try:
            return SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                  repetition_penalty=repetition_penalty, seed=seed)
        except ValueError as e:
            raise KrllmError(f"bad sampling option: {e}") from None

    # ------------------------------------------------------------------ text API
    def generate(self, prompt: str, max_length: int = 100, temperature: float = 0.8, top_p: float = 0.95,
                 top_k: int = 0, seed: int | None = None, *, min_p: float = 0.0, repetition_penalty: float = 1.0,
                 stop: Iterable[str] = (), ignore_eos: bool = False) -> str:
        """The continuation of `prompt` (without the prompt). max_length = new tokens at most."""
        sp = self.sampling(temperature, top_p, top_k, min_p, repetition_penalty, seed)
        return self.complete([self.encode(prompt)], sp, max_length, stop, ignore_eos)[0].text

    def stream(self, prompt: str, max_length: int = 100, temperature: float = 0.8, top_p: float = 0.95,
               top_k: int = 0, seed: int | None = None, *, min_p: float = 0.0, repetition_penalty: float = 1.0,
               stop: Iterable[str] = (), ignore_eos: bool = False) -> Iterator[str]:
        """Like `generate`, yielding text pieces as they become final; "".join(pieces) == generate(...).

        Closing the iterator early cancels the sequence. Its return value (StopIteration.value) is
        the `Completion`.
        """
        sp = self.sampling(temperature, top_p, top_k, min_p, repetition_penalty, seed)
        return self.stream_ids(self.encode(prompt), sp, max_length, stop, ignore_eos)

    def chat(self, messages: list[dict], max_length: int = 256, temperature: float = 0.8, top_p: float = 0.95,
             top_k: int = 0, seed: int | None = None, *, min_p: float = 0.0, repetition_penalty: float = 1.0,
             stop: Iterable[str] = ()) -> str:
        """The assistant's reply to `messages` ([{"role", "content"}]), with the model's chat template."""
        sp = self.sampling(temperature, top_p, top_k, min_p, repetition_penalty, seed)
        return self.complete([self.encode_chat(messages)], sp, max_length, stop)[0].text

    def chat_stream(self, messages: list[dict], max_length: int = 256, temperature: float = 0.8,
                    top_p: float = 0.95, top_k: int = 0, seed: int | None = None, *, min_p: float = 0.0,
                    repetition_penalty: float = 1.0, stop: Iterable[str] = ()) -> Iterator[str]:
        """`chat`, streamed as text pieces (as `stream`)."""
        sp = self.sampling(temperature, top_p, top_k, min_p, repetition_penalty, seed)
        return self.stream_ids(self.encode_chat(messages), sp, max_length, stop, False)

    # ------------------------------------------------------------------ token-id level (the CLI uses these)
    def room(self, ids: list[int]) -> int:
        """New tokens that still fit after `ids` in one engine sequence."""
        return self.engine.max_seq_len - len(ids)

    def stream_ids(self, ids: list[int], sampling: SamplingParams, max_new: int, stop: Iterable[str] = (),
                   ignore_eos: bool = False) -> Iterator[str]:
        """Text pieces of the continuation of token ids `ids`; returns the Completion (StopIteration.value)."""
        ts = TextStream(self.lm.tokenizer, list(stop))
        tokens = self.engine.stream(ids, sampling, max_new, () if ignore_eos else None)
        n = 0
        try:
            while True:
                try:
                    tok = next(tokens)
                except StopIteration as end:  # the engine's stream returns the finished Sequence
                    reason = "length" if end.value.finish_reason == "length" else "stop"
                    break
                n += 1
                piece = ts.push(tok)
                if piece:
                    yield piece
                if ts.stopped:  # a stop string: the rest is not wanted
                    return Completion(ts.text, n, "stop")
        finally:
            tokens.close()  # cancels the sequence when the caller stopped early
        if tail := ts.flush():
            yield tail
        return Completion(ts.text, n, reason)

    def complete(self, prompts: list[list[int]], sampling: SamplingParams | list[SamplingParams],
                 max_new_tokens: int, stop: Iterable[str] = (), ignore_eos: bool = False,
                 on_text: Callable[[int, str], None] | None = None) -> list[Completion]:
        """Token-id prompts decoded together (up to max_batch at a time) -> one Completion each, in order.

        on_text(i, piece) is called with each piece of prompt i's text as it becomes final
        (`krllm generate` streams one prompt to the terminal this way).
        """
        params = sampling if isinstance(sampling, list) else [sampling] * len(prompts)
        stop = list(stop)
        stop_ids = () if ignore_eos else None
        seqs = []
        try:
            for p, sp in zip(prompts, params):
                seqs.append(self.engine.add(p, sp, max_new_tokens, stop_ids))
            streams = [TextStream(self.lm.tokenizer, stop) for _ in seqs]
            index = {id(s): i for i, s in enumerate(seqs)}
            while not all(s.finished for s in seqs):
                for ev in self.engine.step():
                    i = index.get(id(ev.seq))
                    if i is None or ev.token is None:
                        continue
                    piece = streams[i].push(ev.token)
                    if piece and on_text is not None:
                        on_text(i, piece)
                    if streams[i].stopped:
                        self.engine.cancel(ev.seq, "stop")
        finally:  # an error or Ctrl-C: free every slot this call took
            for s in seqs:
                self.engine.cancel(s)
        out = []
        for i, (s, ts) in enumerate(zip(seqs, streams)):
            tail = ts.flush()
            if tail and on_text is not None:
                on_text(i, tail)
            out.append(Completion(ts.text, len(s.output), "length" if s.finish_reason == "length" else "stop"))
        return out
