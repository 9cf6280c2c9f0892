"""`krllm eval translate` against references: its translations equal transformers' greedy `generate` on the
same chat prompts, its scores equal the `sacrebleu` CLI on the files it writes, a served model (a real
`krllm serve` process) gives the same translations as the directory, and bad pair files are named by file:line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from krllm.errors import DataError, UsageError
from krllm.eval.translate import default_template, load_pairs, render_prompt, run_translation
from krllm.infer.testing import tiny_model_dir

ROOT = Path(__file__).resolve().parents[1]
PAIRS = [{"ko": "파일을 저장합니다.", "en": "Saves the file."},
         {"ko": "서식 - 문자를 선택하십시오.", "en": "Choose Format - Character."},
         {"ko": "셀을 선택한 다음 확인을 누르세요.", "en": "Select the cells, then click OK."},
         {"ko": "이 대화 상자를 닫습니다.", "en": "Closes this dialog."},
         {"ko": "표를 삽입합니다.", "en": "Inserts a table."}]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("tiny") / "m", seed=3)


def test_pairs_are_validated_with_file_and_line(tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", PAIRS)
    assert load_pairs(str(good), "ko", "en", n=2) == [{"src": p["ko"], "ref": p["en"]} for p in PAIRS[:2]]
    opus = write_jsonl(tmp_path / "opus.jsonl", [{"translation": p} for p in PAIRS])
    assert load_pairs(str(opus), "ko", "en")[4] == {"src": PAIRS[4]["ko"], "ref": PAIRS[4]["en"]}
    renamed = write_jsonl(tmp_path / "renamed.jsonl", [{"source": p["ko"], "target": p["en"]} for p in PAIRS])
    assert len(load_pairs(str(renamed), "ko", "en", src_key="source", tgt_key="target")) == 5
    bad = write_jsonl(tmp_path / "bad.jsonl", [PAIRS[0], {"ko": "하나"}, "", {"ko": "둘", "en": ""}, "[1, 2]"])
    with pytest.raises(DataError) as e:
        load_pairs(str(bad), "ko", "en")
    msg = str(e.value)
    assert "3 invalid translation pair(s)" in msg
    assert f"{bad}:2: missing key 'en' (keys: ko)" in msg
    assert f"{bad}:4: key 'en': expected non-empty text" in msg and f"{bad}:5: expected a JSON object" in msg
    with pytest.raises(DataError, match="file not found"):
        load_pairs(str(tmp_path / "missing.jsonl"), "ko", "en")
    with pytest.raises(DataError, match="no translation pairs"):
        load_pairs(str(write_jsonl(tmp_path / "empty.jsonl", [])), "ko", "en")
    with pytest.raises(UsageError, match="holds Korean and English"):
        load_pairs("builtin:ko-en-help:heldout", "ko", "ja")
    with pytest.raises(UsageError, match="no {text} placeholder"):
        render_prompt("Translate this", "x")


def test_default_prompt_is_the_sft_records_user_turn():
    from krllm.data.sets.help_corpus import translation_messages

    pair = {"ko": "파일을 저장합니다.", "en": "Saves the file."}
    assert render_prompt(default_template("ko", "en"), pair["ko"]) == translation_messages(pair)[0]["content"]
    assert "한국어" in default_template("en", "ko")


def test_translations_equal_transformers_generate_and_scores_equal_the_cli(tiny, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    out = run_translation(str(tiny), str(data), "ko", "en", tmp_path / "out", max_new_tokens=10, batch_size=2)
    got = out["translate"]["model"]
    tok = AutoTokenizer.from_pretrained(str(tiny))
    hf = AutoModelForCausalLM.from_pretrained(str(tiny), dtype=torch.float32).eval()
    stop = [0, 3] + [tok.convert_tokens_to_ids("<|im_end|>")]
    for pair, ex in zip(PAIRS, got["examples"]):
        messages = [{"role": "user", "content": render_prompt(default_template("ko", "en"), pair["ko"])}]
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.no_grad():
            gen = hf.generate(**ids, max_new_tokens=10, do_sample=False, eos_token_id=stop, pad_token_id=1)
        want = " ".join(tok.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).split())
        assert " ".join(ex["hypothesis"].split()) == want
        assert (ex["source"], ex["reference"]) == (pair["ko"], pair["en"])
    cli = subprocess.run([sys.executable, "-m", "sacrebleu", str(tmp_path / "out" / "ref.txt"), "-i",
                          str(tmp_path / "out" / "hyp.txt"), "-m", "bleu", "chrf", "ter", "-w", "6", "--format",
                          "json"], capture_output=True, text=True, check=True)
    ref = {r["name"]: r for r in json.loads(cli.stdout)}
    for key, name in (("bleu", "BLEU"), ("chrf", "chrF2"), ("ter", "TER")):
        assert round(got[key], 6) == pytest.approx(ref[name]["score"], abs=1e-6)
        assert got["signatures"][key] == ref[name]["signature"]
    saved = json.loads((tmp_path / "out" / "eval.json").read_text(encoding="utf-8"))
    assert saved["translate"]["model"]["bleu"] == got["bleu"] and saved["data"]["n"] == 5
    rows = [json.loads(x) for x in (tmp_path / "out" / "samples.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [set(r) for r in rows] == [{"source", "reference", "hypothesis", "chrf"}] * 5


def test_cli_reports_bad_data_before_loading_a_model(tmp_path, tiny):
    bad = write_jsonl(tmp_path / "bad.jsonl", [PAIRS[0], {"src": "x", "tgt": "y"}])
    proc = subprocess.run([sys.executable, "-m", "krllm", "eval", "translate", str(tiny), "--data", str(bad),
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1
    assert f"{bad}:2: missing key 'ko' (keys: src, tgt)" in proc.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_served_model_translates_like_the_directory(tiny, tmp_path):
    from tests.serve_process import serve_process

    data = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    local = run_translation(str(tiny), str(data), "ko", "en", tmp_path / "local", max_new_tokens=10)
    with serve_process(tiny, "--dtype", "fp32", "--device", "cpu") as (_, url):
        proc = subprocess.run([sys.executable, "-m", "krllm", "eval", "translate", "--url", url + "/v1", "--data",
                               str(data), "--max-new-tokens", "10", "--batch", "3", "--out", str(tmp_path / "served")],
                              capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    served = json.loads((tmp_path / "served" / "eval.json").read_text(encoding="utf-8"))
    assert [e["hypothesis"] for e in served["translate"]["model"]["examples"]] == \
        [e["hypothesis"] for e in local["translate"]["model"]["examples"]]
    assert served["translate"]["model"]["bleu"] == local["translate"]["model"]["bleu"]
    assert served["models"]["model"]["url"] == url + "/v1"
    assert "BLEU" in proc.stdout and "chrF" in proc.stdout
