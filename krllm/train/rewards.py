"""Reward functions for GRPO, with TRL's signature, and the registry a config names them from.

Every reward is `fn(prompts, completions, **kwargs) -> list[float | None]`, one value per
completion, exactly what `trl.GRPOTrainer(reward_funcs=[...])` calls: `completions` are strings or
conversational lists (`[{"role": "assistant", "content": ...}]`), and every data column other than
`prompt` arrives as a keyword list over the batch (e.g. `ground_truth_answer`, `lang`), next to
TRL's own `completion_ids`, `trainer_state`, `log_extra`, `log_metric`. None means "no opinion"
(TRL turns it into NaN and leaves it out of the mean).

Built-in (`BUILTIN_REWARDS`):
    math_correct    1.0 when the completion's final answer (krllm.data.answers.extract_answer: a cued
                    answer, else the last number; two different cued answers count as none) equals the
                    row's `ground_truth_answer` (or `answer`) as an exact number (3/4 == 0.75), else 0.0;
                    a worked-solution ground truth (GSM8K's `... #### 72`) counts by its own cued answer;
                    None for a row whose ground truth is null.
    format          1.0 when the completion is reasoning followed by one final-answer line, exactly:
                    (1) the last non-blank line is a final-answer line (krllm.data.answers.
                        is_final_answer_line): `<cue> <number>` or `[<cue>] \\boxed{<number>}`, optionally
                        led by so/thus/therefore/the/따라서/그러므로 and followed by at most 12 characters
                        with no digit (a unit or an ending: `개`, ` won.`, `입니다.`); markdown `*`/`$`
                        around it ignored; cues: `정답:`, `답:`, `정답은`, `답은`, `Answer:`,
                        `Final answer:`, `The answer is`, `####`;
                    (2) that line holds the only cued answer of the completion (a second answer line,
                        an earlier `정답:` or a hedge `\\boxed{3} or \\boxed{4}` scores 0);
                    (3) at least one non-blank line comes before it (the reasoning).
                    Otherwise 0.0. Correctness is math_correct's job, not this one's.
    length_penalty  0.0 up to `soft_limit`, then linearly down to -1.0 at `hard_limit` (and -1.0
                    beyond); lengths in tokens when TRL passes `completion_ids`, else in characters.
                    Defaults 256 / 512; set them with options (see `load_reward`).

User rewards: `package.module:function` (the module must be importable, e.g. on PYTHONPATH).

    load_reward("length_penalty", soft_limit=128)   -> the callable for GRPOTrainer(reward_funcs=[...])
    load_reward("my_pkg.rewards:brevity")
(`krllm grpo` reads them from its config's `rewards:` list: krllm.train.grpo.reward_functions.)
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
from fractions import Fraction
from typing import Any, Callable

from krllm.data.answers import cued_answers, is_correct, is_final_answer_line
from krllm.errors import KrllmError

__all__ = ["math_correct", "format_reward", "length_penalty", "BUILTIN_REWARDS", "load_reward",
           "completion_text", "GROUND_TRUTH_KEYS"]

GROUND_TRUTH_KEYS = ("ground_truth_answer", "answer")  # the column the math reward reads, then its alias
_TRL_KWARGS = ("completion_ids", "trainer_state", "log_extra", "log_metric", "environments")


def completion_text(completion: Any) -> str:
    """A plain completion string, or the assistant text of a conversational one (turns joined by newlines)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if isinstance(completion, list):
        parts = []
        for m in completion:
            if not isinstance(m, dict) or m.get("role", "assistant") != "assistant":
                continue
            content = m.get("content")
            if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}]
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            if isinstance(content, str):
                parts.append(content)
        return "\n".join(parts)
    raise KrllmError(f"a completion must be a string or a list of messages, got {type(completion).__name__}")


def _column(reward: str, kwargs: dict, keys: tuple[str, ...], n: int) -> list:
    """The first of `keys` among the data columns, checked to hold one value per completion."""
    for key in keys:
        if kwargs.get(key) is not None:
            col = list(kwargs[key])
            if len(col) != n:
                raise KrllmError(f"reward {reward!r}: column {key!r} has {len(col)} values for {n} completions")
            return col
    present = sorted(k for k in kwargs if k not in _TRL_KWARGS)
    raise KrllmError(f"reward {reward!r} needs the data column {' or '.join(repr(k) for k in keys)}; "
                     f"the columns passed are: {', '.join(present) if present else '(none)'}")


# ---------------------------------------------------------------- built-in rewards

def math_correct(prompts: list, completions: list, **kwargs) -> list[float | None]:
    """1.0 when the completion's final answer equals the row's ground truth exactly, else 0.0."""
    truths = _column("math_correct", kwargs, GROUND_TRUTH_KEYS, len(completions))
    return [None if t is None else float(is_correct(completion_text(c), t))
            for c, t in zip(completions, truths)]


def _well_formatted(text: str) -> bool:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) < 2:
        return False  # no reasoning before the answer, or no text at all
    if not is_final_answer_line(lines[-1]):
        return False
    cued = cued_answers(text)
    last_start = text.rstrip().rfind(lines[-1])
    return len(cued) == 1 and cued[0][0] >= last_start and cued[0][1] is not None


def format_reward(prompts: list, completions: list, **kwargs) -> list[float]:
    """1.0 for reasoning that ends with exactly one final-answer line (rules in the module docstring), else 0.0."""
    return [float(_well_formatted(completion_text(c))) for c in completions]


format_reward.__name__ = "format"  # the name TRL logs (rewards/format/mean) and configs use


def length_penalty(prompts: list, completions: list, *, soft_limit: int = 256, hard_limit: int = 512,
                   completion_ids: list | None = None, **kwargs) -> list[float]:
    """0 up to `soft_limit`, linearly to -1 at `hard_limit`; tokens when `completion_ids` is given, else characters."""
    if isinstance(soft_limit, bool) or isinstance(hard_limit, bool) or not 0 <= soft_limit < hard_limit:
        raise KrllmError(f"length_penalty: need 0 <= soft_limit < hard_limit, got soft_limit={soft_limit}, "
                         f"hard_limit={hard_limit}")
    if completion_ids is not None:
        lengths = [len(ids) for ids in completion_ids]
    else:
        lengths = [len(completion_text(c)) for c in completions]
    return [-min(1.0, (n - soft_limit) / (hard_limit - soft_limit)) if n > soft_limit else 0.0 for n in lengths]


_EQUATION = re.compile(r"(-?\d[\d,]*)\s*([+\-−×x*÷/])\s*(-?\d[\d,]*)\s*=\s*(-?\d[\d,]*)")
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "−": lambda a, b: a - b, "×": lambda a, b: a * b,
        "x": lambda a, b: a * b, "*": lambda a, b: a * b,
        "÷": lambda a, b: Fraction(a, b) if b else None, "/": lambda a, b: Fraction(a, b) if b else None}


def _steps_right(text: str) -> float:
    """Share of the `a op b = c` equations in `text` whose arithmetic holds (a division with remainder
    `a ÷ b = q 나머지 r` / `remainder r` counts when a = q*b + r); 0.0 when there are none."""
    found = list(_EQUATION.finditer(text))
    if not found:
        return 0.0
    right = 0
    for m in found:
        a, op, b, c = int(m[1].replace(",", "")), m[2], int(m[3].replace(",", "")), int(m[4].replace(",", ""))
        rest = re.match(r"\s*(?:나머지|remainder)\s*(\d+)", text[m.end():])
        if op in "÷/" and rest:
            right += b != 0 and a == c * b + int(rest[1])
        else:
            right += _OPS[op](a, b) == c
    return right / len(found)


def math_steps(prompts: list, completions: list, **kwargs) -> list[float]:
    """Dense, verifiable credit for the working: the share of `a op b = c` steps whose arithmetic is right.

    A small model rarely gets a whole problem right at first, so `math_correct` alone gives most groups
    no signal; this rewards each correct step on the way (it cannot be gamed without right arithmetic).
    Weight it below math_correct (e.g. 0.2).
    """
    return [_steps_right(completion_text(c)) for c in completions]


BUILTIN_REWARDS: dict[str, Callable] = {"math_correct": math_correct, "format": format_reward,
                                        "math_steps": math_steps, "length_penalty": length_penalty}


# ---------------------------------------------------------------- loading by name

def _import_reward(spec: str) -> Callable:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise KrllmError(f"unknown reward {spec!r}: use a built-in ({', '.join(BUILTIN_REWARDS)}) "
                         "or 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise KrllmError(f"reward {spec!r}: no module named {e.name!r} (install it or put its folder on "
                             "PYTHONPATH)") from None
        raise  # the user's module imports something missing: show where
    fn: Any = module
    for part in attr.split("."):
        if not hasattr(fn, part):
            raise KrllmError(f"reward {spec!r}: module {module_name!r} has no attribute {attr!r}")
        fn = getattr(fn, part)
    if not callable(fn):
        raise KrllmError(f"reward {spec!r}: {attr!r} is a {type(fn).__name__}, not a function")
    return fn


def _check_signature(spec: str, fn: Callable, options: dict) -> None:
    """TRL passes every column as a keyword: the function must take **kwargs; options must be its parameters."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # some builtins and C callables have no signature; TRL will tell
        return
    if not any(p.kind is p.VAR_KEYWORD for p in params):
        raise KrllmError(f"reward {spec!r} must accept **kwargs: TRL calls it as fn(prompts=..., completions=..., "
                         "completion_ids=..., trainer_state=..., <every data column>=...)")
    named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    unknown = sorted(set(options) - (named - {"prompts", "completions"}))
    if unknown:
        raise KrllmError(f"reward {spec!r}: unknown option(s) {', '.join(unknown)}; it takes: "
                         f"{', '.join(sorted(named - {'prompts', 'completions', 'completion_ids'})) or '(none)'}")


def load_reward(spec: str, **options) -> Callable:
    """A built-in name or `package.module:function` -> the reward; `options` become keyword arguments
    (a functools.partial that keeps the function's `__name__`, which TRL and our logs use)."""
    if not isinstance(spec, str) or not spec.strip():
        raise KrllmError(f"a reward must be named by a non-empty string, got {spec!r}")
    spec = spec.strip()
    fn = BUILTIN_REWARDS[spec] if spec in BUILTIN_REWARDS else _import_reward(spec)
    _check_signature(spec, fn, options)
    if not options:
        return fn
    bound = functools.partial(fn, **options)
    bound.__name__ = getattr(fn, "__name__", spec)
    return bound

