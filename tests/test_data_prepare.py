"""End-to-end `krllm data prepare`: real datatrove runs on crafted files and on builtin:ko-law.

Every test reads the shards back (TokenShards + the tokenizer) and compares documents, counts and
splits with what the inputs must produce; bad inputs must fail with file:line and leave an
existing output untouched.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer

from krllm.config import ConfigError, load_config
from krllm.data.sets.builtin import builtin_files
from krllm.data.prepare.job import build_plan, prepare
from krllm.data.prepare.config import PrepareConfig
from krllm.data.tokens.shards import TokenShards
from krllm.data.prepare.textclean import clean_text, split_of
from krllm.errors import DataError, KrllmError
from krllm.runs import hash_file, hash_path

REPO = Path(__file__).resolve().parents[1]


def _law_sentences() -> list[str]:
    text = "\n".join(p.read_text(encoding="utf-8") for p in builtin_files("builtin:ko-law"))
    seen, out = set(), []
    for s in " ".join(text.split()).split(". "):
        if len(s) > 25 and s not in seen and sum("가" <= c <= "힣" for c in s) > 15:
            seen.add(s)
            out.append(s + ".")
    return out


SENTS = _law_sentences()
DOCS = [" ".join(SENTS[i * 6:(i + 1) * 6]) for i in range(14)]  # 14 distinct Korean documents


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """The project's own Korean BPE, trained small in the test."""
    from krllm.tokenizer.train import train_tokenizer

    out = tmp_path_factory.mktemp("tok") / "tok"
    texts = [p.read_text(encoding="utf-8") for p in builtin_files("builtin:ko-law")] + ["English text, HTML & more."]
    train_tokenizer(out, texts=texts, vocab_size=700, progress=False)
    return out


def _cfg(tokenizer_dir, out, sources, **kw) -> PrepareConfig:
    data = {"sources": sources, "tokenizer": str(tokenizer_dir), "out_dir": str(out),
            "executor": {"workers": 1}, "filters": {"min_chars": 20, "min_hangul_ratio": 0.5}}
    for k, v in kw.items():
        data[k] = {**data.get(k, {}), **v} if isinstance(v, dict) else v
    return PrepareConfig.model_validate(data)


def _decoded(out, tokenizer_dir) -> dict[str, list[str]]:
    """Every document of every split, decoded without its trailing <|endoftext|>."""
    tok = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
    docs = {}
    for split in ("train", "val", "test"):
        sh = TokenShards(out, split, allow_empty=True)
        docs[split] = []
        for i in range(sh.num_documents):
            ids = sh.document(i)
            assert ids[-1] == 0  # <|endoftext|> after every document
            docs[split].append(tok.decode(ids[:-1].tolist(), skip_special_tokens=False))
    return docs


@pytest.fixture(scope="module")
def crafted(tmp_path_factory):
    """Inputs in all three formats with known duplicates, near-duplicates and filter victims."""
    d = tmp_path_factory.mktemp("crafted")
    near0 = DOCS[0].rsplit(" ", 1)[0] + " 개정한다."  # last eojeol changed
    variant1 = DOCS[1].replace(" ", "\n", 1).replace(" ", "   ", 3)  # same after case/space folding
    with open(d / "a.jsonl", "w", encoding="utf-8") as f:
        for i in range(3):
            f.write(json.dumps({"text": DOCS[i], "id": i}, ensure_ascii=False) + "\n")
        f.write("\n")  # blank lines are not records
        f.write(json.dumps({"text": DOCS[4]}, ensure_ascii=False) + "\n")
    with open(d / "b.jsonl", "w", encoding="utf-8") as f:
        for t in (variant1, near0, "This document is written in English only, so the Hangul filter drops it.",
                  DOCS[5]):
            f.write(json.dumps({"content": t}, ensure_ascii=False) + "\n")
    html = f"<div><p>{DOCS[3][:80]}</p><br>{DOCS[3][80:]} &amp; 끝</div><script>var x = 1;</script>"
    (d / "c.txt").write_text(f"{DOCS[6]}\n{DOCS[7]}\n\n짧은 글\n\n\n{html}\n\n  {DOCS[8]}  \n", encoding="utf-8")
    pq.write_table(pa.table({"text": [DOCS[9], DOCS[10], DOCS[9].upper(), DOCS[11]]}), d / "d.parquet")
    sources = [str(d / "a.jsonl"), {"path": str(d / "b.jsonl"), "text_field": "content"}, str(d / "c.txt"),
               str(d / "d.parquet")]
    expected = {DOCS[i] for i in (2, 4, 5, 8, 9, 10, 11)} | {f"{DOCS[6]}\n{DOCS[7]}",
                                                             clean_text(html)}
    alternatives = [{DOCS[0], near0}, {DOCS[1], clean_text(variant1)}]
    return d, sources, expected, alternatives


def _check_crafted(manifest, docs, crafted):
    _, _, expected, alternatives = crafted
    kept = [t for split in docs.values() for t in split]
    assert len(kept) == len(set(kept)) == len(expected) + len(alternatives)
    rest = set(kept) - expected
    assert expected <= set(kept)
    for alt in alternatives:  # exactly one copy of each duplicate pair survives
        assert len(rest & alt) == 1
    assert manifest["documents"] == {"read": 16, "kept": 11}
    assert manifest["removed"] == {"bad_records": 0, "empty": 0, "too_short": 1, "too_long": 0,
                                   "low_hangul_ratio": 1, "exact_duplicate": 2, "near_duplicate": 1}


def test_prepare_crafted_inputs_counts_and_contents(crafted, tokenizer_dir, tmp_path):
    out = tmp_path / "out"
    cfg = _cfg(tokenizer_dir, out, crafted[1], split={"val": 0.25, "test": 0.25})
    manifest = prepare(cfg)
    docs = _decoded(out, tokenizer_dir)  # decoding a shard document gives back the cleaned text
    _check_crafted(manifest, docs, crafted)
    # splits: disjoint, and each document where its hash says
    for split, texts in docs.items():
        assert texts, f"{split} is empty"
        assert all(split_of(t, 0.25, 0.25, 0) == split for t in texts)
    # manifest numbers == what the memmaps hold
    for split, info in manifest["splits"].items():
        sh = TokenShards(out, split)
        assert len(sh) == info["tokens"] == sum(f["tokens"] for f in info["files"])
        assert sh.num_documents == info["documents"] == len(docs[split])
        sh.verify()
    assert manifest["tokenizer"]["sha256"] == hash_file(tokenizer_dir / "tokenizer.json")
    assert manifest["tokenizer"]["vocab_size"] == Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).get_vocab_size()
    assert manifest["dtype"] == "uint16"
    assert {s["name"]: s["sha256"] for s in manifest["sources"]} == {
        str(crafted[0] / n): hash_file(crafted[0] / n) for n in ("a.jsonl", "b.jsonl", "c.txt", "d.parquet")}
    assert {s["format"] for s in manifest["sources"]} == {"jsonl", "txt", "parquet"}
    assert load_config(out / "config.yaml", PrepareConfig) == cfg  # resolved config beside the output
    assert manifest["config"]["split"] == {"val": 0.25, "test": 0.25, "seed": 0}
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "logs", "manifest.json", "test", "train", "val"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_output_is_reproducible_and_independent_of_task_count(crafted, tokenizer_dir, tmp_path):
    split = {"val": 0.25, "test": 0.25}
    one = prepare(_cfg(tokenizer_dir, tmp_path / "one", crafted[1], split=split))
    again = prepare(_cfg(tokenizer_dir, tmp_path / "again", crafted[1], split=split))
    for name in ("train/00000.ds", "train/00000.ds.index", "val/00000.ds", "test/00000.ds.index"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "again" / name).read_bytes()
    assert one["splits"] == again["splits"]
    three = prepare(_cfg(tokenizer_dir, tmp_path / "three", crafted[1], split=split,
                         executor={"workers": 1, "tasks": 3}))
    assert len(three["splits"]["train"]["files"]) > 1  # one shard per task that kept documents
    assert one["removed"] == three["removed"]
    a, b = _decoded(tmp_path / "one", tokenizer_dir), _decoded(tmp_path / "three", tokenizer_dir)
    # which copy of a duplicate pair survives depends on the task layout; everything else may not
    dupes = set().union(*crafted[3])
    assert {k: sorted(set(v) - dupes) for k, v in a.items()} == {k: sorted(set(v) - dupes) for k, v in b.items()}
    for docs in (a, b):
        _check_crafted(three, docs, crafted)
        assert not set(docs["train"]) & set(docs["val"]) and not set(docs["train"]) & set(docs["test"])
        assert not set(docs["val"]) & set(docs["test"])


@pytest.mark.parametrize("normalization", ["NFC", "NFKC", "none"])
def test_token_streams_equal_the_plain_tokenizer_on_the_cleaned_text(normalization, tokenizer_dir, tmp_path):
    """Every shard document == `Tokenizer.from_file(...).encode(clean_text(doc)).ids + [eos]`, with the
    tokenizer as shipped (NFC normalizer included), whatever shortcuts the tokenize step takes."""
    import unicodedata

    tricky = [unicodedata.normalize("NFD", DOCS[0]),  # conjoining jamo: NFC recomposes them
              DOCS[1].replace("제", "제\u0301", 2) + " ①②　ＡＢＣ ﬁ Å Ω",  # combining mark, compatibility forms
              DOCS[2] + " ḍ̇ é\u0323 \u1100\u1161\u11a8"]
    docs = tricky + DOCS[3:8]
    path = tmp_path / "x.jsonl"
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in docs), encoding="utf-8")
    out = tmp_path / "out"
    prepare(_cfg(tokenizer_dir, out, [str(path)], clean={"normalization": normalization},
                 dedupe={"minhash": False}, split={"val": 0.3, "test": 0.3}))
    tok = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
    assert type(tok.normalizer).__name__ == "NFC"
    expected = sorted(tok.encode(clean_text(t, normalization=normalization)).ids + [0] for t in docs)
    got = sorted(TokenShards(out, split, allow_empty=True).document(i).tolist()
                 for split in ("train", "val", "test") for i in range(TokenShards(out, split, allow_empty=True).num_documents))
    assert got == expected


@pytest.fixture()
def existing_output(crafted, tokenizer_dir, tmp_path):
    out = tmp_path / "out"
    prepare(_cfg(tokenizer_dir, out, crafted[1]))
    return out, hash_path(out, exclude=())


def _assert_untouched(out, digest):
    assert hash_path(out, exclude=()) == digest
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []


def test_bad_json_line_names_file_and_line_and_keeps_output(existing_output, tokenizer_dir, tmp_path):
    out, digest = existing_output
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": DOCS[0]}, ensure_ascii=False) + "\n\n{\"text\": \"끝나지 않은\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{bad}:3: invalid JSON"):
        prepare(_cfg(tokenizer_dir, out, [str(bad)]))
    _assert_untouched(out, digest)


@pytest.mark.parametrize("content, message", [
    ('[\n  {"text": "배열"}\n]\n', r":1: invalid JSON .*; this looks like a JSON array"),
    ('{"body": "본문"}\n', r":1: missing field 'text' \(keys: body\)"),
    ('{"text": 12}\n', r":1: field 'text' must be a string, got int"),
    ('["text"]\n', r":1: expected a JSON object, got list"),
])
def test_malformed_records_are_errors_with_location(content, message, tokenizer_dir, tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        prepare(_cfg(tokenizer_dir, tmp_path / "out", [str(path)]))
    assert not (tmp_path / "out").exists()


def test_undecodable_txt_names_line(tokenizer_dir, tmp_path):
    path = tmp_path / "x.txt"
    path.write_bytes("첫 문단입니다.\n\n둘째 문단\n".encode() + b"\xff\xfe broken\n")
    with pytest.raises(DataError, match=rf"{path}:4: not valid UTF-8"):
        prepare(_cfg(tokenizer_dir, tmp_path / "out", [str(path)]))
    with pytest.raises(DataError, match=rf"{path}:4: not valid UTF-8"):
        prepare(_cfg(tokenizer_dir, tmp_path / "out", [str(path)], txt_mode="file"))


def test_skip_bad_records_counts_and_lists_them(tokenizer_dir, tmp_path):
    good = [json.dumps({"text": t}, ensure_ascii=False) for t in DOCS[:6]]
    path = tmp_path / "mixed.jsonl"
    lines = good[:2] + ["{not json"] + good[2:4] + ['{"other": 1}'] + good[4:]
    path.write_bytes(("\n".join(lines) + "\n").encode() + b'{"text": "\xff\xfe"}\n')
    txt = tmp_path / "t.txt"
    txt.write_bytes(f"{DOCS[6]}\n\n".encode() + b"\xff bad paragraph\nstill the same paragraph\n\n" + DOCS[7].encode())
    m = prepare(_cfg(tokenizer_dir, tmp_path / "out", [str(path), str(txt)], skip_bad_records=True))
    assert m["removed"]["bad_records"] == 4
    assert m["documents"]["kept"] == 8
    prefixes = [f"{path}:3: invalid JSON (", f"{path}:6: missing field 'text' (keys: other); set text_field",
                f"{path}:9: not valid UTF-8 (invalid start byte", f"{txt}:3: not valid UTF-8 (invalid start byte"]
    assert len(m["bad_record_examples"]) == 4
    for example, prefix in zip(m["bad_record_examples"], prefixes):
        assert example.startswith(prefix), example
    texts = {t for v in _decoded(tmp_path / "out", tokenizer_dir).values() for t in v}
    assert texts == set(DOCS[:8])


def test_empty_result_is_a_clear_error(existing_output, tokenizer_dir, tmp_path):
    out, digest = existing_output
    path = tmp_path / "english.jsonl"
    path.write_text("".join(json.dumps({"text": f"English sentence number {i} is long enough."}) + "\n"
                            for i in range(5)))
    with pytest.raises(DataError, match=r"no documents left: read 5 from 1 source file\(s\) and removed all of them "
                                        r"\(Hangul ratio < min_hangul_ratio: 5\)"):
        prepare(_cfg(tokenizer_dir, out, [str(path)]))
    _assert_untouched(out, digest)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="no documents: the 1 source file"):
        prepare(_cfg(tokenizer_dir, out, [str(empty)]))
    _assert_untouched(out, digest)


def test_config_errors_are_listed_together(tokenizer_dir, tmp_path):
    from krllm.config import validate

    with pytest.raises(ConfigError) as e:
        validate({"filters": {"min_chars": 50, "max_chars": 10}, "split": {"val": 0.6, "test": 0.5},
                  "executor": {"workers": 0}, "sorces": []}, PrepareConfig)
    text = str(e.value)
    for needle in ("filters: max_chars (10) is below min_chars (50)", "split: val + test = 1.1",
                   "executor.workers: Input should be greater than or equal to 1", "sorces: unknown key"):
        assert needle in text
    with pytest.raises(DataError, match="no such file, directory or glob match"):
        prepare(_cfg(tokenizer_dir, tmp_path / "o", [str(tmp_path / "nope*.jsonl")]))
    with pytest.raises(KrllmError, match="tokenizer not found"):
        prepare(_cfg(tmp_path / "missing_tok", tmp_path / "o", ["builtin:ko-law"]))
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match=r"x.csv: can't tell the format"):
        prepare(_cfg(tokenizer_dir, tmp_path / "o", [str(tmp_path / "x.csv")]))
    assert not (tmp_path / "o").exists()


def test_output_inside_a_source_directory_is_not_read_back(crafted, tokenizer_dir, tmp_path):
    src = tmp_path / "corpus"
    src.mkdir()
    (src / "a.jsonl").write_text((crafted[0] / "a.jsonl").read_text(encoding="utf-8"), encoding="utf-8")
    first = prepare(_cfg(tokenizer_dir, src / "shards", [str(src)]))
    second = prepare(_cfg(tokenizer_dir, src / "shards", [str(src)]))  # shards/manifest.json etc. are skipped
    assert [s["name"] for s in second["sources"]] == [str(src / "a.jsonl")]
    assert second["splits"] == first["splits"]


@pytest.mark.slow
def test_builtin_ko_law_two_workers(tokenizer_dir, tmp_path):
    """The shipped config on the built-in corpus, 2 worker processes, called from Python."""
    cfg = load_config(REPO / "configs/data/ko_pretrain.yaml", PrepareConfig,
                      [f"tokenizer={tokenizer_dir}", f"out_dir={tmp_path / 'ko'}"])
    assert cfg.executor.workers == 2
    m = prepare(cfg)
    assert m["documents"]["read"] == 2064  # blank-line paragraphs of the 11 files
    assert m["removed"]["exact_duplicate"] > 100 and m["removed"]["near_duplicate"] > 0
    assert m["removed"]["too_short"] > 0 and m["removed"]["low_hangul_ratio"] > 0
    assert m["documents"]["read"] == sum(m["removed"].values()) + m["documents"]["kept"]
    assert len(m["sources"]) == 11 and all(len(s["sha256"]) == 64 for s in m["sources"])
    docs = _decoded(tmp_path / "ko", tokenizer_dir)
    assert all(docs.values())
    assert sum(map(len, docs.values())) == m["documents"]["kept"]
    texts = [t for v in docs.values() for t in v]
    assert sum("제1조 ① 대한민국은 민주공화국이다." in t for t in texts) == 1
    assert all(t == clean_text(t) and len(t) >= 10 for t in texts)  # cleaned and filtered
    for split, texts in docs.items():
        assert all(split_of(t, 0.05, 0.05, 0) == split for t in texts)
        assert len(TokenShards(tmp_path / "ko", split)) == m["splits"][split]["tokens"]


def _run_cli(args, cwd, timeout=240):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", "krllm", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_cli_prepare_with_two_workers_and_error_exit(crafted, tokenizer_dir, tmp_path):
    d = crafted[0]
    config = tmp_path / "cfg.yaml"
    config.write_text(textwrap.dedent(f"""\
        sources: [{d / 'a.jsonl'}, {{path: {d / 'b.jsonl'}, text_field: content}}, {d / 'c.txt'}, {d / 'd.parquet'}]
        tokenizer: {tokenizer_dir}
        filters: {{min_chars: 20}}
        split: {{val: 0.25, test: 0.25}}
        """))
    r = _run_cli(["data", "prepare", "-c", str(config), "--out", str(tmp_path / "cli"), "--workers", "2"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "exact duplicate" in r.stdout and "near duplicate (MinHash)" in r.stdout
    assert "Traceback" not in r.stderr and "INFO" not in r.stderr  # datatrove's logs stay in logs/
    m = json.loads((tmp_path / "cli/manifest.json").read_text())
    _check_crafted(m, _decoded(tmp_path / "cli", tokenizer_dir), crafted)
    assert m["config"]["executor"]["workers"] == 2
    assert (tmp_path / "cli/logs/clean/logs/task_00000.log").is_file()

    info = _run_cli(["data", "info", str(tmp_path / "cli"), "--decode", "1", "--verify"], tmp_path)
    assert info.returncode == 0, info.stderr
    assert "all tokens verified" in info.stdout and "train document 0" in info.stdout

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "좋은 줄입니다 충분히 긴 문장"}\n{"text": oops}\n')
    r = _run_cli(["data", "prepare", "-c", str(config), "--set", f"sources=[{bad}]", "--out", str(tmp_path / "cli"),
                  "--workers", "2"], tmp_path)
    assert r.returncode == 1
    assert f"error: {bad}:2: invalid JSON" in r.stderr and "Traceback" not in r.stderr
    assert json.loads((tmp_path / "cli/manifest.json").read_text()) == m  # previous output kept


@pytest.mark.slow
def test_script_without_main_guard_fails_clearly_instead_of_hanging(tokenizer_dir, tmp_path):
    script = tmp_path / "no_guard.py"
    script.write_text(textwrap.dedent(f"""\
        from krllm.data.prepare.job import prepare
        from krllm.data.prepare.config import PrepareConfig
        prepare(PrepareConfig(tokenizer={str(tokenizer_dir)!r}, out_dir={str(tmp_path / 'o')!r},
                              executor={{"workers": 2}}))
        """))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode != 0
    assert 'if __name__ == "__main__":' in r.stderr
    guarded = tmp_path / "guarded.py"
    guarded.write_text("if __name__ == '__main__':\n" + textwrap.indent(script.read_text(), "    "))
    r = subprocess.run([sys.executable, str(guarded)], capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert TokenShards(tmp_path / "o", "train").num_documents > 0


def test_publishing_plan_runs_under_plain_datatrove_executors(crafted, tokenizer_dir, tmp_path):
    """What a cluster run does: stages chained with `depends=`, the last one publishes the output."""
    from datatrove.executor import LocalPipelineExecutor

    out = tmp_path / "out"
    plan = build_plan(_cfg(tokenizer_dir, out, crafted[1]), tmp_path / ".out.build", out, publish=True)
    assert plan.logs_dir == tmp_path / "out.logs"
    job = None
    for st in plan.stages:
        job = LocalPipelineExecutor(st.pipeline, tasks=st.tasks, workers=1, logging_dir=str(plan.logs_dir / st.name),
                                    depends=job)
    job.run()
    assert not (tmp_path / ".out.build").exists()
    m = json.loads((out / "manifest.json").read_text())
    _check_crafted(m, _decoded(out, tokenizer_dir), crafted)
    names = {p.name for p in out.iterdir()}
    assert {"config.yaml", "manifest.json", "train"} <= names and "logs" not in names and ".work" not in names
    assert (plan.logs_dir / "finalize" / "stats.json").is_file()


def test_same_stages_build_slurm_executors(tokenizer_dir, tmp_path):
    """The plan is plain datatrove pipelines: Slurm executors accept it unchanged (not submitted)."""
    import dill
    from datatrove.executor.slurm import SlurmPipelineExecutor

    cfg = _cfg(tokenizer_dir, tmp_path / "out", ["builtin:ko-law"], executor={"workers": 2, "tasks": 8})
    plan = build_plan(cfg, tmp_path / "build", publish=True, logs_dir=tmp_path / "logs")
    assert [s.name for s in plan.stages] == ["clean", "exact_find", "minhash_sigs", "minhash_buckets",
                                             "minhash_cluster", "tokenize", "finalize"]
    assert [s.tasks for s in plan.stages] == [8, 1, 8, 14, 1, 8, 1]
    previous = None
    for st in plan.stages:
        previous = SlurmPipelineExecutor(st.pipeline, tasks=st.tasks, time="01:00:00", partition="cpu",
                                         logging_dir=str(plan.logs_dir / st.name), depends=previous, job_name=st.name)
        dill.loads(dill.dumps(st.pipeline))  # what the Slurm job unpickles
    assert previous.depends.depends.tasks == 1


def test_help_lists_every_config_key_with_its_default():
    from krllm.commands.data import config_keys_help

    text = config_keys_help()
    cfg = PrepareConfig()
    for section in ("clean", "filters", "dedupe", "split", "executor"):
        for key, value in getattr(cfg, section).model_dump().items():
            assert f"  {section}.{key} " in text and f"[{value}]" in text, (section, key)
    for key in ("sources", "text_field", "txt_mode", "skip_bad_records", "tokenizer", "eos_token", "out_dir"):
        assert f"  {key} " in text
