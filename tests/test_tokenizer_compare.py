"""`krllm tokenizer compare` against hand-computed numbers, and the tokenizer CLI end to end."""

from __future__ import annotations

import json

import pytest

from krllm.cli import main
from krllm.tokenizer.compare import compare, load_tokenizer, markdown_table, measure

# Two documents. By hand:
#   "가나 다"   4 chars, 3+3+1+3 = 10 bytes, 2 eojeol
#   "ab  c\n"  6 chars, 6 bytes,            2 eojeol
#   total      10 chars, 16 bytes, 4 eojeol
DOCS = ["가나 다", "ab  c\n"]


def _save(tok, path):
    from transformers import PreTrainedTokenizerFast

    PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False).save_pretrained(str(path))
    return path


@pytest.fixture
def bytes_dir(tmp_path):
    """Byte-level BPE with no merges: one token per UTF-8 byte, lossless."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return _save(tok, tmp_path / "bytes")


@pytest.fixture
def words_dir(tmp_path):
    """Whitespace word-level: one token per eojeol, loses the exact spacing."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, "가나": 1, "다": 2, "ab": 3, "c": 4}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return _save(tok, tmp_path / "words")


def test_hand_computed_numbers(bytes_dir, words_dir):
    b, w = compare([bytes_dir, words_dir], DOCS, names=["bytes", "words"])
    assert (b.chars, b.bytes, b.eojeol, b.documents) == (10, 16, 4, 2)
    assert b.tokens == 16 and b.vocab_size == 256 and b.roundtrip_ok == 2 and b.roundtrip_exact
    assert b.tokens_per_char == pytest.approx(1.6)
    assert b.tokens_per_eojeol == pytest.approx(4.0)
    assert b.bytes_per_token == pytest.approx(1.0)
    # words: 가나|다 and ab|c -> 4 tokens; "가나 다" decodes back exactly, "ab  c\n" becomes "ab c"
    assert w.tokens == 4 and w.vocab_size == 5
    assert (w.tokens_per_char, w.tokens_per_eojeol, w.bytes_per_token) == pytest.approx((0.4, 1.0, 4.0))
    assert w.roundtrip_ok == 1 and not w.roundtrip_exact
    md = markdown_table([b, w])
    assert "| bytes | 256 | 16 | 1.600 | 4.000 | 1.000 | 2/2 |" in md
    assert "| words | 5 | 4 | 0.400 | 1.000 | 4.000 | 1/2 |" in md


def test_cli_compare_json_and_table(bytes_dir, words_dir, tmp_path, capsys):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"body": d}, ensure_ascii=False) + "\n" for d in DOCS))
    out = tmp_path / "cmp.json"
    with pytest.raises(SystemExit) as e:
        main(["tokenizer", "compare", str(bytes_dir), str(words_dir), "--corpus", str(corpus),
              "--text-field", "body", "--json", str(out)])
    assert e.value.code == 0
    printed = capsys.readouterr().out
    assert "tokens/eojeol" in printed and "1/2 LOSSY" in printed and "0.250x" in printed
    data = json.loads(out.read_text())
    assert data["documents"] == 2
    rows = {r["name"]: r for r in data["tokenizers"]}
    assert rows["bytes"]["tokens"] == 16 and rows["words"]["roundtrip_exact"] is False
    assert rows["bytes"]["tokens_per_char"] == pytest.approx(1.6)


def test_cli_compare_bad_inputs(tmp_path, bytes_dir, capsys):
    with pytest.raises(SystemExit) as e:
        main(["tokenizer", "compare", str(tmp_path / "nope")])
    assert e.value.code == 1 and "not a directory" in capsys.readouterr().err
    bad = tmp_path / "c.jsonl"
    bad.write_text('{"text": "fine"}\n{"txt": "typo"}\n')
    with pytest.raises(SystemExit) as e:
        main(["tokenizer", "compare", str(bytes_dir), "--corpus", str(bad)])
    assert e.value.code == 1 and "c.jsonl:2: missing field 'text'" in capsys.readouterr().err


def test_counts_agree_with_tokenizers_library_on_ko_law(tmp_path):
    """Our trained tokenizer measured through AutoTokenizer == raw `tokenizers` encode counts."""
    from tokenizers import Tokenizer

    from krllm.data.sets.builtin import builtin_documents
    from krllm.tokenizer.train import train_tokenizer

    train_tokenizer(tmp_path / "ko", sources=["builtin:ko-law"], vocab_size=800, progress=False)
    texts = [t for _, t in builtin_documents("builtin:ko-law")]
    stats = measure(load_tokenizer(tmp_path / "ko"), texts)
    raw = Tokenizer.from_file(str(tmp_path / "ko" / "tokenizer.json"))
    assert stats.tokens == sum(len(e.ids) for e in raw.encode_batch(texts, add_special_tokens=False))
    assert stats.chars == 65199 and stats.roundtrip_exact
    assert stats.eojeol == sum(len(t.split()) for t in texts)


def test_cli_train_with_overrides_and_encode(tmp_path, capsys):
    cfg = tmp_path / "tok.yaml"
    cfg.write_text("sources:\n  - {path: builtin:npc, n: 100}\n  - {path: builtin:math:en, n: 100}\nvocab_size: 9999\n")
    out = tmp_path / "tok"
    with pytest.raises(SystemExit) as e:
        main(["tokenizer", "train", "-c", str(cfg), "--set", "vocab_size=400", "--set", "min_frequency=1",
              "--out", str(out), "-q"])
    assert e.value.code == 0
    assert "vocab 400" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["vocab_size"] == 400 and summary["corpus_documents"] == 200
    assert "vocab_size: 400" in (out / "config.yaml").read_text()
    assert f"out_dir: {out}" in (out / "config.yaml").read_text()

    with pytest.raises(SystemExit) as e:
        main(["tokenizer", "encode", str(out), "체력이 45/120이에요."])
    printed = capsys.readouterr().out
    assert e.value.code == 0 and "round trip: exact" in printed and "' 4'" in printed and "'5'" in printed


def test_cli_train_config_error_exit_code(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["tokenizer", "train", "--set", "vocab_size=10", "--set", "pre_tokenizer=bert", "--out", str(tmp_path / "t")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "vocab_size: must be at least 261" in err and "pre_tokenizer:" in err
    assert not (tmp_path / "t").exists()


def test_train_help_lists_every_config_key():
    from krllm.commands.tokenizer import TRAIN_KEYS
    from krllm.tokenizer.train import TokenizerTrainConfig

    listed = {line.split()[0] for line in TRAIN_KEYS.splitlines()[1:] if line.startswith("  ") and line[2] != " "}
    assert listed == set(TokenizerTrainConfig.model_fields)
