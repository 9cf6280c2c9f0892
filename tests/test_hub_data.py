"""`hf:NAME[:CONFIG][@SPLIT]` data specs: rows of a Hub dataset validated like JSONL lines.

The Hub is not reachable in tests (HF_HUB_OFFLINE=1), so `datasets.load_dataset` is replaced by a
function that records its arguments and returns an in-memory `datasets.Dataset` shaped like the real
set (GSM8K: question / answer with `#### N`; preference pairs; chat messages). What could break: the
spec parsing, the column renames, per-row errors, GSM8K's worked answers as ground truth in the
reward and in eval, and the error when a dataset cannot be loaded.
"""

from __future__ import annotations

import datasets
import pytest

from krllm.data.sets.hub import parse_hub_spec
from krllm.data.sets.records import load_examples
from krllm.errors import DataError

GSM8K = [{"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
                      "How many clips did Natalia sell altogether in April and May?",
          "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips "
                    "altogether in April and May.\n#### 72"},
         {"question": "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. "
                      "How much did she earn?",
          "answer": "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\nWorking 50 minutes, she earned "
                    "0.2 x 50 = $<<0.2*50=10>>10.\n#### 10"}]


@pytest.fixture
def hub(monkeypatch):
    """Replace datasets.load_dataset: {(name, config, split): rows}; records every call."""
    tables, calls = {}, []

    def load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        if (name, config, split) not in tables:
            raise FileNotFoundError(f"Couldn't find a dataset script at {name}")
        return datasets.Dataset.from_list(tables[(name, config, split)])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return tables, calls


@pytest.mark.parametrize("spec, parsed", [
    ("hf:openai/gsm8k:main", ("openai/gsm8k", "main", "train")),
    ("hf:openai/gsm8k:main@test", ("openai/gsm8k", "main", "test")),
    ("hf:trl-lib/ultrafeedback_binarized@train[:100]", ("trl-lib/ultrafeedback_binarized", None, "train[:100]")),
])
def test_spec_parsing(spec, parsed):
    assert parse_hub_spec(spec) == parsed


def test_gsm8k_rows_become_grpo_records_scored_by_their_final_answer(hub):
    from krllm.eval.math import is_correct
    from krllm.train.rewards import math_correct

    tables, calls = hub
    tables[("openai/gsm8k", "main", "test")] = GSM8K
    recs = load_examples("hf:openai/gsm8k:main@test", "grpo", n=5,
                         columns={"question": "prompt", "answer": "ground_truth_answer"})
    assert calls == [("openai/gsm8k", "main", "test")]
    assert [r["prompt"] for r in recs] == [[{"role": "user", "content": g["question"]}] for g in GSM8K]
    truths = [r["ground_truth_answer"] for r in recs]
    completions = ["48 / 2 = 24, 48 + 24 = 72\n#### 72", "12 / 60 * 50 = 10\n답: 24"]
    assert math_correct(None, completions, ground_truth_answer=truths) == [1.0, 0.0]
    # the numbers inside the worked solution (24, 0.2) are not the answer
    assert not is_correct("정답: 24", truths[0]) and is_correct("The answer is 72.", truths[0])
    assert is_correct("\\boxed{10}", truths[1])


def test_first_n_rows_and_sft_and_dpo_sets(hub):
    tables, _ = hub
    tables[("org/chat", None, "train")] = [{"messages": [{"role": "user", "content": f"q{i}"},
                                                         {"role": "assistant", "content": f"a{i}"}]} for i in range(10)]
    tables[("org/pairs", None, "train")] = [{"question": "1+1?", "good": "2", "bad": "3"}]
    assert [r["messages"][0]["content"] for r in load_examples("hf:org/chat", "sft", n=3)] == ["q0", "q1", "q2"]
    pair = load_examples("hf:org/pairs", "dpo", columns={"question": "prompt", "good": "chosen", "bad": "rejected"})
    assert pair[0]["chosen"][-1]["content"] == "2" and pair[0]["rejected"][-1]["content"] == "3"


def test_bad_rows_are_named_by_spec_row_and_key(hub):
    tables, _ = hub
    tables[("org/pairs", None, "train")] = [{"prompt": "ok", "chosen": "a", "rejected": "b"},
                                            {"prompt": "ok", "chosen": "a"},
                                            {"prompt": "", "chosen": "a", "rejected": "b"}]
    with pytest.raises(DataError) as e:
        load_examples("hf:org/pairs", "dpo")
    msg = str(e.value)
    assert "2 invalid dpo record(s) in hf:org/pairs" in msg
    assert "hf:org/pairs row 1: rejected" in msg and "hf:org/pairs row 2: prompt" in msg


def test_a_dataset_that_cannot_load_says_which_and_why(hub):
    with pytest.raises(DataError, match=r"hf:nobody/nothing@dev: could not load dataset 'nobody/nothing'.*HF_HUB_OFFLINE"):
        load_examples("hf:nobody/nothing@dev", "sft")
    with pytest.raises(DataError, match="expected hf:NAME"):
        load_examples("hf:", "sft")


def test_grpo_run_config_reads_a_hub_dataset(hub, tmp_path):
    """The data section's `columns` reach the loader: split_records as every method calls it."""
    from krllm.config import validate
    from krllm.train.grpo_config import GRPORunConfig
    from krllm.train.hf.data import split_records

    tables, _ = hub
    tables[("openai/gsm8k", "main", "train")] = GSM8K * 10
    cfg = validate({"name": "g", "runs_dir": str(tmp_path), "base_model": "x",
                    "data": {"train": "hf:openai/gsm8k:main", "eval_fraction": 0.1,
                             "columns": {"question": "prompt", "answer": "ground_truth_answer"}}}, GRPORunConfig)
    train, held = split_records(cfg.data, "grpo")
    assert len(train) == 18 and len(held) == 2
    assert all(r["ground_truth_answer"].endswith(("#### 72", "#### 10")) for r in train + held)
