"""krllm.train.rewards: TRL-signature rewards on tricky answers, plain and conversational completions, and
the registry (built-ins, options, user `module:function`, bad specs)."""

from __future__ import annotations

import functools
import pickle
import sys

import pytest

from krllm.data.sets.generated import math_preference_pairs
from krllm.errors import KrllmError
from krllm.train.rewards import (
    BUILTIN_REWARDS,
    completion_text,
    format_reward,
    length_penalty,
    load_reward,
    math_correct,
)

TRICKY = [  # (completion, ground truth, math_correct, format)
    ("풀이:\n1. 3 + 4 = 7\n정답: 7", "7", 1.0, 1.0),
    ("3 + 4 = 7이므로\n정답: 8", "7", 0.0, 1.0),  # the reasoning's 7 is not the answer
    ("3 + 4 = 7이므로\n정답: 8", "8", 1.0, 1.0),
    ("풀이: 12 + 3 = 15\n정답: 12\n아니, 정답: 15", "15", 0.0, 0.0),  # two answers: hedging earns nothing
    ("Two options:\n\\boxed{3} or \\boxed{4}", "4", 0.0, 0.0),
    ("I don't know.\nMaybe later.", "5", 0.0, 0.0),  # none
    ("Cost: 617 × 2 = 1,234\nAnswer: 1,234", "1234", 1.0, 1.0),  # commas
    ("Temperature drop: 3 - 8 = -5\nAnswer: -5", "-5", 1.0, 1.0),  # negative
    ("Half of 3/2 is 3/4\nAnswer: 0.75", "3/4", 1.0, 1.0),  # decimal vs fraction truth
    ("Three quarters\nThe answer is 3/4.", "0.75", 1.0, 1.0),
    ("Average: 7 ÷ 2 = 3.50\nAnswer: 3.5", 3.5, 1.0, 1.0),  # a numeric truth column
    ("Work it out\n\\boxed{42}", "42", 1.0, 1.0),
    ("풀이: 6 × 7 = 42\n따라서 정답은 42개입니다.", "42", 1.0, 1.0),  # Korean ending
    ("풀이: 6 × 7 = 42\n답은 42이다", "42", 1.0, 1.0),
    ("정답: 42", "42", 1.0, 0.0),  # right, but no reasoning before the answer line
    ("풀이:\n1. 6 × 7 = 42", "42", 1.0, 0.0),  # no cue: the last number; no final line
    ("풀이:\n정답: 42\n(계산이 맞는지 확인함)", "42", 1.0, 0.0),  # the answer line is not last
]


def test_math_correct_and_format_on_tricky_answers():
    completions = [c for c, *_ in TRICKY]
    truths = [t for _, t, *_ in TRICKY]
    assert math_correct(prompts=[""] * len(TRICKY), completions=completions, ground_truth_answer=truths) \
        == [m for *_, m, _ in TRICKY]
    assert format_reward(prompts=[""] * len(TRICKY), completions=completions) == [f for *_, f in TRICKY]


def test_conversational_completions_read_like_plain_ones():
    plain = [c for c, *_ in TRICKY]
    conv = [[{"role": "assistant", "content": c}] for c in plain]
    truths = [t for _, t, *_ in TRICKY]
    assert math_correct(None, conv, ground_truth_answer=truths) == math_correct(None, plain, ground_truth_answer=truths)
    assert format_reward(None, conv) == format_reward(None, plain)
    assert length_penalty(None, conv, soft_limit=10, hard_limit=40) == length_penalty(None, plain, soft_limit=10,
                                                                                      hard_limit=40)
    # only assistant turns count; content parts are joined
    assert completion_text([{"role": "tool", "content": "정답: 9"}, {"role": "assistant", "content": "정답: 3"}]) \
        == "정답: 3"
    assert completion_text([{"role": "assistant", "content": [{"type": "text", "text": "Answer: "},
                                                              {"type": "text", "text": "5"}]}]) == "Answer: 5"
    with pytest.raises(KrllmError, match="must be a string or a list of messages, got int"):
        completion_text(5)


def test_ground_truth_column_alias_and_errors():
    assert math_correct(None, ["Answer: 3"], answer=["3"]) == [1.0]  # the alias
    assert math_correct(None, ["Answer: 3"], ground_truth_answer=["3"], answer=["full worked text"]) == [1.0]
    assert math_correct(None, ["Answer: 3", "Answer: 4"], ground_truth_answer=["3", None]) == [1.0, None]
    with pytest.raises(KrllmError) as e:
        math_correct(None, ["Answer: 3"], lang=["en"], trainer_state=object(), completion_ids=[[1]])
    msg = str(e.value)
    assert "reward 'math_correct' needs the data column 'ground_truth_answer' or 'answer'" in msg
    assert "the columns passed are: lang" in msg and "trainer_state" not in msg
    with pytest.raises(KrllmError, match="'ground_truth_answer' has 1 values for 2 completions"):
        math_correct(None, ["a", "b"], ground_truth_answer=["1"])


def test_rewards_rank_the_generated_preference_pairs():
    """Chosen beats rejected on every built-in pair: on correctness when the final line is wrong, on format when
    it is missing."""
    pairs = math_preference_pairs(300, seed=3, lang="mixed")
    truth = [p["answer"] for p in pairs]
    for side in ("chosen", "rejected"):
        texts = [p[side] for p in pairs]
        correct = math_correct(None, texts, ground_truth_answer=truth)
        fmt = format_reward(None, texts)
        if side == "chosen":
            assert correct == [1.0] * len(pairs) and fmt == [1.0] * len(pairs)
        else:
            for p, c, f in zip(pairs, correct, fmt):
                assert (f == 0.0) if p["flaw"] == "no_final" else (c == 0.0 and f == 1.0), p


def test_length_penalty_soft_and_hard_limits():
    texts = ["x" * n for n in (0, 100, 101, 150, 200, 500)]
    assert length_penalty(None, texts, soft_limit=100, hard_limit=200) == [0.0, 0.0, -0.01, -0.5, -1.0, -1.0]
    # tokens win over characters when TRL passes completion_ids
    assert length_penalty(None, ["short", "s"], completion_ids=[[1] * 300, [1] * 10]) == [-44 / 256, 0.0]
    with pytest.raises(KrllmError, match="soft_limit < hard_limit"):
        length_penalty(None, ["x"], soft_limit=50, hard_limit=50)


def test_builtin_registry_and_options():
    assert set(BUILTIN_REWARDS) == {"math_correct", "format", "math_steps", "length_penalty"}
    fns = [load_reward("math_correct"), load_reward("format"), load_reward("length_penalty", soft_limit=2, hard_limit=6)]
    assert fns[:2] == [math_correct, format_reward]
    assert [f.__name__ for f in fns] == ["math_correct", "format", "length_penalty"]
    assert isinstance(fns[2], functools.partial)
    assert fns[2](prompts=None, completions=["abcd"]) == [-0.5]
    again = pickle.loads(pickle.dumps(fns[2]))  # accelerate / multiprocessing may pickle reward functions
    assert again(None, ["abcd"]) == [-0.5] and again.__name__ == "length_penalty"
    with pytest.raises(KrllmError, match="unknown option\\(s\\) soft; it takes: hard_limit, soft_limit"):
        load_reward("length_penalty", soft=3)


USER_MODULE = '''
def brevity(prompts, completions, *, per_char=0.01, **kwargs):
    return [-per_char * len(c) for c in completions]

def uses_lang(prompts, completions, lang, **kwargs):
    return [1.0 if l == "ko" else 0.0 for l in lang]

def no_kwargs(prompts, completions):
    return [0.0 for _ in completions]

NOT_A_FUNCTION = 3
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_rewards_mod.py").write_text(USER_MODULE, encoding="utf-8")
    (tmp_path / "broken_rewards_mod.py").write_text("import not_installed_pkg_xyz\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_rewards_mod"
    for name in ("my_rewards_mod", "broken_rewards_mod"):
        sys.modules.pop(name, None)


def test_user_reward_from_a_module(user_module):
    fn = load_reward(f"{user_module}:brevity")
    assert fn.__name__ == "brevity" and fn(prompts=["p"], completions=["abc"]) == [-0.03]
    scaled = load_reward(f"{user_module}:brevity", per_char=1.0)
    assert scaled.__name__ == "brevity" and scaled(None, ["ab"]) == [-2.0]
    # a data column reaches it as a keyword list
    by_lang = load_reward(f"{user_module}:uses_lang")
    assert by_lang(prompts=["a", "b"], completions=["x", "y"], lang=["ko", "en"], trainer_state=None) == [1.0, 0.0]


@pytest.mark.parametrize("spec,match", [
    ("nonexistent_reward", "unknown reward 'nonexistent_reward': use a built-in .* or 'package.module:function'"),
    ("no_such_module_xyz:fn", "reward 'no_such_module_xyz:fn': no module named 'no_such_module_xyz'"),
    ("my_rewards_mod:missing", "reward 'my_rewards_mod:missing': module 'my_rewards_mod' has no attribute 'missing'"),
    ("my_rewards_mod:NOT_A_FUNCTION", "reward 'my_rewards_mod:NOT_A_FUNCTION': 'NOT_A_FUNCTION' is a int, not a"),
    ("my_rewards_mod:no_kwargs", "reward 'my_rewards_mod:no_kwargs' must accept \\*\\*kwargs"),
    ("my_rewards_mod:", "unknown reward 'my_rewards_mod:'"),
    ("", "non-empty string"),
])
def test_bad_specs_name_the_spec(user_module, spec, match):
    with pytest.raises(KrllmError, match=match):
        load_reward(spec)


def test_a_users_own_missing_import_is_not_hidden(user_module):
    with pytest.raises(ModuleNotFoundError, match="not_installed_pkg_xyz"):
        load_reward("broken_rewards_mod:fn")


def test_math_steps_checks_each_equation():
    from krllm.train.rewards import math_steps

    got = math_steps(None, ["1. 9 + 5 = 14\n정답: 14", "50 + 5 = 45", "17 ÷ 5 = 3 나머지 2", "3 × 4 = 12\n12 - 2 = 9",
                            [{"role": "assistant", "content": "1,000 - 250 = 750"}], "정답: 7"])
    assert got == [1.0, 0.0, 1.0, 0.5, 1.0, 0.0]
