"""krllm.data.sets.records: every format parses to the documented shape; every bad line is reported with
file:line and the key at fault, all at once."""

import json

import pytest

from krllm.data.sets import records as R
from krllm.data.sets.generated import math_preference_pairs, math_problems, npc_dialogues, sentiment_examples
from krllm.errors import DataError


def write(tmp_path, lines, name="d.jsonl"):
    p = tmp_path / name
    p.write_text("\n".join(x if isinstance(x, str) else json.dumps(x, ensure_ascii=False) for x in lines) + "\n",
                 encoding="utf-8")
    return p


def test_sft_formats_normalize(tmp_path):
    chat = {"messages": [{"role": "user", "content": "안녕"}, {"role": "assistant", "content": "반갑네"}], "id": 7}
    inst = {"instruction": "상인처럼 답하라", "input": "검 얼마예요?", "output": "10골드라네"}
    inst_no_input = {"instruction": "인사해", "output": "안녕하세요"}
    text = {"text": "그냥 글"}
    p = write(tmp_path, [chat, "", inst, inst_no_input, text])
    out = R.load_jsonl(p, "sft")
    assert out[0] == {"messages": chat["messages"]}  # extra keys dropped
    assert out[1]["messages"] == [{"role": "user", "content": "상인처럼 답하라\n\n검 얼마예요?"},
                                  {"role": "assistant", "content": "10골드라네"}]
    assert out[2]["messages"][0] == {"role": "user", "content": "인사해"}
    assert out[3] == {"text": "그냥 글"}
    with_sys = R.load_jsonl(p, "sft", system="너는 NPC")
    assert with_sys[0]["messages"][0] == {"role": "system", "content": "너는 NPC"}
    assert with_sys[3] == {"text": "그냥 글"}  # plain text gets no system turn


def test_every_bad_line_reported_with_file_line_and_key(tmp_path):
    lines = [
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},  # 1 ok
        '{"messages": [',  # 2: JSON syntax -> raised immediately by the reader
    ]
    with pytest.raises(DataError, match=r"d\.jsonl:2: invalid JSON"):
        R.load_jsonl(write(tmp_path, lines), "sft")

    bad = [
        {"messages": [{"role": "bot", "content": "a"}]},  # 1
        {"messages": [{"role": "user", "content": "a"}]},  # 2 no assistant
        {"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]},  # 3
        {"messages": [{"role": "user", "content": ["img"]}, {"role": "assistant", "content": "x"}]},  # 4
        {"instruction": "do", "output": 3},  # 5
        {"prompt": "what?"},  # 6 unknown format
        [1, 2],  # 7
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "  "}]},  # 8
        {"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "s"},
                      {"role": "assistant", "content": "b"}]},  # 9
    ]
    with pytest.raises(DataError) as e:
        R.load_jsonl(write(tmp_path, bad), "sft")
    msg = str(e.value)
    assert msg.startswith("9 invalid sft record(s)")
    for expected in ["d.jsonl:1: messages[0].role: unknown role 'bot'",
                     "d.jsonl:2: messages: has no assistant message",
                     "d.jsonl:3: messages[0].content: required key is missing",
                     "d.jsonl:4: messages[0].content: must be a string",
                     "d.jsonl:5: output: must be a string, got int",
                     "d.jsonl:6: unknown record",
                     "d.jsonl:7: each line must be a JSON object, got list",
                     "d.jsonl:8: messages[1].content: assistant message is empty",
                     "d.jsonl:9: messages[1].role: a system message must come first"]:
        assert expected in msg, expected


def test_error_list_is_capped_but_counts_all(tmp_path):
    p = write(tmp_path, [{"text": ""}] * (R.MAX_REPORTED + 5))
    with pytest.raises(DataError) as e:
        R.load_jsonl(p, "sft")
    assert str(e.value).startswith(f"{R.MAX_REPORTED + 5} invalid")
    assert "and 5 more bad rows" in str(e.value)


def test_file_level_errors(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        R.load_jsonl(tmp_path / "nope.jsonl", "sft")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="no records"):
        R.load_jsonl(tmp_path / "empty.jsonl", "sft")
    (tmp_path / "latin.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"latin\.jsonl:2: not valid UTF-8"):
        R.load_jsonl(tmp_path / "latin.jsonl", "sft")
    # gzip: the same reader, the same file:line errors
    import gzip

    with gzip.open(tmp_path / "z.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write('{"text": "압축"}\n\n{"text": \n')
    with pytest.raises(DataError, match=r"z\.jsonl\.gz:3: invalid JSON"):
        R.load_jsonl(tmp_path / "z.jsonl.gz", "sft")
    with gzip.open(tmp_path / "ok.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write('{"text": "압축"}\n')
    assert R.load_jsonl(tmp_path / "ok.jsonl.gz", "sft") == [{"text": "압축"}]


def test_classification_records(tmp_path):
    p = write(tmp_path, [{"text": "좋아요", "label": "positive"}, {"text": "별로", "label": 0}])
    assert R.load_jsonl(p, "classify") == [{"text": "좋아요", "label": "positive"}, {"text": "별로", "label": 0}]
    p = write(tmp_path, [{"text": "좋아요"}, {"text": "x", "label": True}, {"text": "", "label": "a"}])
    with pytest.raises(DataError) as e:
        R.load_jsonl(p, "classify")
    assert "d.jsonl:1: label: required key is missing" in str(e.value)
    assert "d.jsonl:2: label: must be a string or an integer, got bool" in str(e.value)
    assert "d.jsonl:3: text: is empty" in str(e.value)


def test_dpo_records(tmp_path):
    good = [
        {"prompt": "2+2?", "chosen": "4", "rejected": "5"},
        {"messages": [{"role": "user", "content": "2+3?"}], "chosen": [{"role": "assistant", "content": "5"}],
         "rejected": "6"},
    ]
    out = R.load_jsonl(write(tmp_path, good), "dpo", system="calc")
    assert out[0] == {"prompt": [{"role": "system", "content": "calc"}, {"role": "user", "content": "2+2?"}],
                      "chosen": [{"role": "assistant", "content": "4"}],
                      "rejected": [{"role": "assistant", "content": "5"}]}
    assert out[1]["chosen"] == [{"role": "assistant", "content": "5"}]
    bad = [
        {"prompt": "q", "chosen": "a"},  # 1
        {"prompt": "q", "chosen": "a", "rejected": "a"},  # 2
        {"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
         "chosen": "b", "rejected": "c"},  # 3
        {"chosen": "b", "rejected": "c"},  # 4
        {"prompt": "q", "chosen": [{"role": "user", "content": "b"}], "rejected": "c"},  # 5
        {"prompt": "  ", "chosen": "a", "rejected": "b"},  # 6 empty prompt
        {"prompt": [], "chosen": "a", "rejected": "b"},  # 7
        {"prompt": "q", "chosen": 5, "rejected": "b"},  # 8 wrong types
        {"prompt": {"role": "user", "content": "q"}, "chosen": "a", "rejected": "b"},  # 9
        {"prompt": "q", "chosen": "a", "rejected": [{"role": "assistant", "content": 7}]},  # 10
        {"prompt": "q", "chosen": "a", "rejected": ""},  # 11
    ]
    with pytest.raises(DataError) as e:
        R.load_jsonl(write(tmp_path, bad), "dpo")
    msg = str(e.value)
    assert msg.startswith("11 invalid dpo record(s)")
    for expected in ["d.jsonl:1: rejected: required key is missing",
                     "d.jsonl:2: rejected: is identical to 'chosen'",
                     "d.jsonl:3: prompt: must end with a user turn",
                     "d.jsonl:4: prompt: required key is missing",
                     "d.jsonl:5: chosen: has no assistant message",
                     "d.jsonl:6: prompt: is empty",
                     "d.jsonl:7: prompt: is an empty list",
                     "d.jsonl:8: chosen: must be a string or a list of {'role', 'content'} messages, got int",
                     "d.jsonl:9: prompt: must be a string or a list of {'role', 'content'} messages, got dict",
                     "d.jsonl:10: rejected[0].content: must be a string",
                     "d.jsonl:11: rejected: is empty"]:
        assert expected in msg, expected


def test_grpo_records(tmp_path):
    good = [
        {"prompt": "3*4?", "ground_truth_answer": 12},
        {"prompt": "3*4?", "answer": " 12 "},  # the alias, trimmed
        {"prompt": [{"role": "user", "content": "1/2 + 1/4?"}], "ground_truth_answer": "3/4",
         "answer": "worked text", "level": 2, "tags": ["frac"], "meta": {"src": "x", "ok": True}, "note": None},
    ]
    out = R.load_jsonl(write(tmp_path, good), "grpo", system="calc")
    sys_user = [{"role": "system", "content": "calc"}, {"role": "user", "content": "3*4?"}]
    assert out[0] == {"prompt": sys_user, "ground_truth_answer": "12"}
    assert out[1] == {"prompt": sys_user, "ground_truth_answer": "12"}  # 'answer' as the alias is not kept twice
    assert out[2] == {"prompt": [{"role": "system", "content": "calc"}, {"role": "user", "content": "1/2 + 1/4?"}],
                      "ground_truth_answer": "3/4", "answer": "worked text", "level": 2, "tags": ["frac"],
                      "meta": {"src": "x", "ok": True}, "note": None}  # extras kept: they reach the rewards
    bad = [
        {"prompt": "q"},  # 1
        {"prompt": "q", "answer": [1]},  # 2
        {"prompt": "", "ground_truth_answer": "1"},  # 3 empty prompt
        {"ground_truth_answer": "1"},  # 4
        {"prompt": "q", "ground_truth_answer": True},  # 5
        {"prompt": "q", "ground_truth_answer": "  "},  # 6
        {"prompt": "q", "ground_truth_answer": "1", "completions": ["x"]},  # 7 a name TRL passes itself
        {"prompt": "q", "ground_truth_answer": "1", "trainer_state": 1},  # 8
        {"prompt": 3, "ground_truth_answer": "1"},  # 9
        {"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
         "ground_truth_answer": "1"},  # 10
    ]
    with pytest.raises(DataError) as e:
        R.load_jsonl(write(tmp_path, bad), "grpo")
    msg = str(e.value)
    assert msg.startswith("10 invalid grpo record(s)")
    for expected in ["d.jsonl:1: ground_truth_answer: required key is missing (the alias 'answer' is accepted too)",
                     "d.jsonl:2: answer: must be a string (or a number), got list",
                     "d.jsonl:3: prompt: is empty",
                     "d.jsonl:4: prompt: required key is missing",
                     "d.jsonl:5: ground_truth_answer: must be a string (or a number), got bool",
                     "d.jsonl:6: ground_truth_answer: is empty",
                     "d.jsonl:7: completions: is a name TRL passes to reward functions itself",
                     "d.jsonl:8: trainer_state: is a name TRL passes",
                     "d.jsonl:9: prompt: must be a string or a list",
                     "d.jsonl:10: prompt: must end with a user turn"]:
        assert expected in msg, expected


def test_grpo_extras_must_be_json_values():
    ok = R.grpo_record({"prompt": "q", "ground_truth_answer": 1, "x": [1, {"a": [None, 2.5]}]})
    assert ok["x"] == [1, {"a": [None, 2.5]}]
    with pytest.raises(R.RecordError, match=r"^x\[1\]\.a: must be a JSON value .* got set"):
        R.grpo_record({"prompt": "q", "ground_truth_answer": 1, "x": [1, {"a": {3}}]})
    with pytest.raises(R.RecordError, match=r"^y: object keys must be strings, got int"):
        R.grpo_record({"prompt": "q", "ground_truth_answer": 1, "y": {1: 2}})


def test_builtin_sets_convert_from_the_generators():
    npc = R.load_examples("builtin:npc", "sft", n=5, seed=3)
    src = npc_dialogues(5, seed=3)
    assert [m["messages"] for m in npc] == [R.instruction_to_messages(r["instruction"], r["output"], r["input"])
                                            for r in src]
    math = R.load_examples("builtin:math:en", "sft", n=4, seed=1)
    ref = math_problems(4, seed=1, lang="en")
    assert math[2]["messages"] == [{"role": "user", "content": ref[2]["question"]},
                                   {"role": "assistant", "content": ref[2]["solution"]}]
    grpo = R.load_examples("builtin:math:mixed", "grpo", n=3, seed=2)
    src = math_problems(3, seed=2, lang="mixed")
    assert grpo == [{"prompt": [{"role": "user", "content": r["question"]}], "ground_truth_answer": r["answer"],
                     "lang": r["lang"]} for r in src]
    dpo = R.load_examples("builtin:math:en", "dpo", n=4, seed=1, system="solve")
    pairs = math_preference_pairs(4, seed=1, lang="en")
    assert dpo == [{"prompt": [{"role": "system", "content": "solve"}, {"role": "user", "content": p["question"]}],
                    "chosen": [{"role": "assistant", "content": p["chosen"]}],
                    "rejected": [{"role": "assistant", "content": p["rejected"]}]} for p in pairs]
    assert dpo[2]["chosen"] == math[2]["messages"][1:]  # the same problem and solution as the SFT set
    sent = R.load_examples("builtin:sentiment", "classify", n=6, seed=2)
    assert sent == sentiment_examples(6, seed=2)


def test_builtin_errors():
    with pytest.raises(DataError, match="unknown built-in set 'builtin:poems'"):
        R.load_examples("builtin:poems", "sft")
    with pytest.raises(DataError, match="builtin:npc cannot feed classify"):
        R.load_examples("builtin:npc", "classify")
    with pytest.raises(DataError, match="builtin:sentiment cannot feed dpo"):
        R.load_examples("builtin:sentiment", "dpo")
    with pytest.raises(DataError, match="unknown option in 'builtin:math:fr'"):
        R.load_examples("builtin:math:fr", "grpo")
    with pytest.raises(DataError, match="unknown option in 'builtin:npc:en'"):
        R.load_examples("builtin:npc:en", "sft")


def test_file_n_takes_the_first_records(tmp_path):
    p = write(tmp_path, [{"text": f"t{i}"} for i in range(5)])
    assert R.load_examples(p, "sft", n=2) == [{"text": "t0"}, {"text": "t1"}]


def test_utf8_bom_is_accepted_by_every_record_kind(tmp_path):
    """Windows editors start files with a byte-order mark; sft, classify, grpo and eval read it like
    `data prepare` does (one reader, krllm.data.sources.iter_jsonl)."""
    rows = {"sft": {"messages": [{"role": "user", "content": "안녕"}, {"role": "assistant", "content": "네"}]},
            "grpo": {"prompt": "1+1은?", "answer": "2"},
            "classify": {"text": "좋아요", "label": "pos"}}
    for kind, row in rows.items():
        p = tmp_path / f"{kind}.jsonl"
        p.write_bytes(b"\xef\xbb\xbf" + (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
        plain = tmp_path / f"{kind}_plain.jsonl"
        plain.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
        assert R.load_examples(p, kind) == R.load_examples(plain, kind)
    assert R.load_examples(tmp_path / "grpo.jsonl", "grpo")[0]["ground_truth_answer"] == "2"
