"""Tokenizer training: the directory contract, exact round trip, chat template, errors."""

from __future__ import annotations

import json
import random
import unicodedata

import pytest

from krllm.config import ConfigError, load_config
from krllm.errors import DataError
from krllm.tokenizer.chat_template import render_chatml
from krllm.tokenizer.pretokenize import SPECIAL_IDS, split_preview
from krllm.tokenizer.train import TokenizerTrainConfig, train_tokenizer

MIXED = [
    "대한민국은 민주공화국이다. 대한민국의 주권은 국민에게 있고, 모든 권력은 국민으로부터 나온다.",
    "The quick brown fox jumps over the lazy dog; it's 12:45 and we'll see.",
    "digits 0123456789 9876543210 3·1운동 4·19 제1조 ① 2024년 12월 31일",
    "emoji 😀👍🏽 👨‍👩‍👧‍👦 🇰🇷 한국어 이모지 ㅋㅋㅋ ㅠㅠ",
    "mixed\twhitespace  double  \n\n\n  indented\r\nwindows line\u3000ideographic space\u00a0nbsp  trailing   ",
    " leading space and tabs\t\t\tthen\x0bvertical tab and form\x0cfeed",
    "漢字 かな カナ café naïve Ελληνικά русский عربى עברית हिन्दी",
    "<|im_start|>user\n특수 토큰이 본문에 나와도<|im_end|>\n<|endoftext|> 괜찮다",
]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    """One small tokenizer trained on the real built-in corpus (~1 s)."""
    out = tmp_path_factory.mktemp("tok") / "ko"
    train_tokenizer(out, vocab_size=1200, progress=False,
                    sources=["builtin:ko-law", {"path": "builtin:npc", "n": 200}, {"path": "builtin:math", "n": 200}])
    return out


@pytest.fixture(scope="module")
def hf_tok(tok_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tok_dir))


def test_directory_contract(tok_dir, hf_tok):
    names = {p.name for p in tok_dir.iterdir()}
    assert names == {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "config.yaml", "summary.json"}
    for token, i in SPECIAL_IDS.items():
        assert hf_tok.convert_tokens_to_ids(token) == i
    assert (hf_tok.bos_token_id, hf_tok.eos_token_id, hf_tok.pad_token_id) == (0, 0, 1)
    assert len(hf_tok) == 1200
    summary = json.loads((tok_dir / "summary.json").read_text())
    assert summary["vocab_size"] == 1200 and summary["special_tokens"] == SPECIAL_IDS
    assert [s["spec"] for s in summary["sources"]] == ["builtin:ko-law", "builtin:npc", "builtin:math"]
    assert summary["sources"][0]["chars"] == 65199  # konlpy's kolaw + kobill, all 11 files
    assert summary["sources"][1]["documents"] == 200
    assert summary["corpus_chars"] == sum(s["chars"] for s in summary["sources"])
    cfg = load_config(tok_dir / "config.yaml", TokenizerTrainConfig)
    assert cfg.vocab_size == 1200 and cfg.sources[1].n == 200
    tc = json.loads((tok_dir / "tokenizer_config.json").read_text())
    assert tc["tokenizer_class"] == "PreTrainedTokenizerFast" and "{% generation %}" in tc["chat_template"].replace("{%- generation %}", "{% generation %}")
    # tokenizer.json itself carries the pre-tokenizer (portable to other loaders)
    tj = json.loads((tok_dir / "tokenizer.json").read_text())
    assert tj["normalizer"]["type"] == "NFC"
    assert [p["type"] for p in tj["pre_tokenizer"]["pretokenizers"]] == ["Split", "ByteLevel"]
    assert tj["pre_tokenizer"]["pretokenizers"][1]["use_regex"] is False


def test_tokenizers_library_loads_it_alone(tok_dir, hf_tok):
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    for text in MIXED:
        assert raw.encode(text).ids == hf_tok(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("text", MIXED)
def test_round_trip_exact(hf_tok, text):
    ids = hf_tok(text, add_special_tokens=False)["input_ids"]
    assert hf_tok.decode(ids, clean_up_tokenization_spaces=False) == text


def test_round_trip_ko_law(hf_tok):
    from krllm.data.sets.builtin import builtin_documents

    for name, text in builtin_documents("builtin:ko-law"):
        ids = hf_tok(text, add_special_tokens=False)["input_ids"]
        assert hf_tok.decode(ids) == text, name
        assert len(ids) < len(text.encode("utf-8")) / 2, name  # merges were actually learned


def test_round_trip_random_unicode(hf_tok):
    """Random code points from every plane in use: decode(encode(x)) == NFC(x); == x when x is NFC."""
    rng = random.Random(0)
    ranges = [(0x20, 0x7E), (0xA0, 0x24F), (0x370, 0x3FF), (0x1100, 0x11FF), (0x3130, 0x318F), (0xAC00, 0xD7A3),
              (0x4E00, 0x9FFF), (0x1F300, 0x1FAFF), (0x2000, 0x206F), (0x0, 0x1F), (0xE000, 0xE0FF), (0x10000, 0x1FFFF)]
    backend = hf_tok.backend_tokenizer
    for _ in range(300):
        chars = []
        for _ in range(rng.randint(1, 40)):
            lo, hi = rng.choice(ranges)
            cp = rng.randint(lo, hi)
            if not 0xD800 <= cp <= 0xDFFF:
                chars.append(chr(cp))
        text = "".join(chars)
        ids = hf_tok(text, add_special_tokens=False)["input_ids"]
        back = hf_tok.decode(ids)
        assert back == backend.normalizer.normalize_str(text)
        if unicodedata.is_normalized("NFC", text):
            assert back == text


def test_nfc_recomposes_decomposed_hangul(hf_tok):
    composed = "한국어 자모 정규화"
    decomposed = unicodedata.normalize("NFD", composed)
    assert decomposed != composed
    assert hf_tok(decomposed)["input_ids"] == hf_tok(composed)["input_ids"]
    assert hf_tok.decode(hf_tok(decomposed)["input_ids"]) == composed


def test_pre_tokenizer_keeps_hangul_runs_and_splits_digits():
    pieces = split_preview("대한민국은 2024년 Hello세계 3·1운동")
    assert pieces == ["대한민국은", " 2", "0", "2", "4", "년", " Hello", "세계", " 3", "·", "1", "운동"]
    assert split_preview("합계: 12 + 305 = 317") == ["합계", ":", " 1", "2", " +", " 3", "0", "5", " =", " 3", "1", "7"]
    # the GPT-2 baseline groups digits and glues Latin to Hangul
    assert split_preview("2024년 Hello세계", "gpt2") == ["2024", "년", " Hello세계"]


def test_encoding_adds_no_special_tokens(hf_tok):
    assert 0 not in hf_tok("안녕하세요")["input_ids"]


def test_chat_template_chatml_and_generation_prompt(hf_tok):
    msgs = [{"role": "system", "content": "너는 대장장이다."}, {"role": "user", "content": "수리비가 얼마예요?"},
            {"role": "assistant", "content": "검 수리비는 20골드예요."}]
    text = hf_tok.apply_chat_template(msgs, tokenize=False)
    assert text == render_chatml(msgs) == (
        "<|im_start|>system\n너는 대장장이다.<|im_end|>\n<|im_start|>user\n수리비가 얼마예요?<|im_end|>\n"
        "<|im_start|>assistant\n검 수리비는 20골드예요.<|im_end|>\n")
    prompt = hf_tok.apply_chat_template(msgs[:2], tokenize=False, add_generation_prompt=True)
    assert prompt == render_chatml(msgs[:2], add_generation_prompt=True)
    assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")
    ids = hf_tok.apply_chat_template(msgs, tokenize=True, return_dict=True)["input_ids"]
    assert ids.count(2) == 3 and ids.count(3) == 3  # <|im_start|>, <|im_end|> are single tokens


def test_chat_template_assistant_mask(hf_tok):
    msgs = [{"role": "user", "content": "안녕?"}, {"role": "assistant", "content": "반가워요!"},
            {"role": "user", "content": "2+3은?"}, {"role": "assistant", "content": "5예요."}]
    out = hf_tok.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert len(ids) == len(mask)
    trained = [i for i, m in zip(ids, mask) if m]
    assert hf_tok.decode(trained) == "반가워요!<|im_end|>5예요.<|im_end|>"
    # the mask is exactly the spans of assistant content + closing <|im_end|>
    spans, cur = [], []
    for i, m in zip(ids, mask):
        if m:
            cur.append(i)
        elif cur:
            spans.append(hf_tok.decode(cur))
            cur = []
    assert spans == ["반가워요!<|im_end|>", "5예요.<|im_end|>"]


def test_loads_from_a_llama_model_directory(tok_dir, tmp_path):
    """Inside an HF model dir (config.json model_type=llama) AutoTokenizer must keep our tokenizer."""
    import shutil

    from transformers import AutoTokenizer

    d = tmp_path / "hf"
    shutil.copytree(tok_dir, d)
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"],
                                               "vocab_size": 1200}))
    tok = AutoTokenizer.from_pretrained(str(d))
    text = "대한민국은 2024년 Hello  세계"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert ids == AutoTokenizer.from_pretrained(str(tok_dir))(text, add_special_tokens=False)["input_ids"]


def test_training_is_deterministic(tmp_path):
    texts = MIXED * 20
    a = train_tokenizer(tmp_path / "a", texts=texts, vocab_size=400, progress=False)
    b = train_tokenizer(tmp_path / "b", texts=texts, vocab_size=400, progress=False)
    assert a["vocab_size"] == b["vocab_size"]
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()


def test_jsonl_source_with_messages_and_errors(tmp_path):
    good = tmp_path / "chat.jsonl"
    good.write_text(json.dumps({"messages": [{"role": "user", "content": "안녕"}, {"role": "assistant", "content": "네"}]},
                               ensure_ascii=False) + "\n\n" + json.dumps({"messages": "문자열도 된다"}, ensure_ascii=False) + "\n")
    s = train_tokenizer(tmp_path / "t", sources=[str(good)], text_field="messages", vocab_size=300, progress=False)
    assert s["corpus_documents"] == 2
    assert s["corpus_chars"] == len("<|im_start|>user\n안녕<|im_end|>\n<|im_start|>assistant\n네<|im_end|>\n") + len("문자열도 된다")

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": "broken\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: invalid JSON"):
        train_tokenizer(tmp_path / "x", sources=[str(bad)], progress=False)
    import gzip

    with gzip.open(tmp_path / "bad.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write('{"text": "ok"}\n\n{"text": "broken\n')
    with pytest.raises(DataError, match=r"bad\.jsonl\.gz:3: invalid JSON"):
        train_tokenizer(tmp_path / "x", sources=[str(tmp_path / "bad.jsonl.gz")], progress=False)
    missing = tmp_path / "missing.jsonl"
    missing.write_text('{"text": "ok"}\n{"body": "no text key"}\n')
    with pytest.raises(DataError, match=r"missing\.jsonl:2: missing field 'text' \(keys: body\)"):
        train_tokenizer(tmp_path / "x", sources=[str(missing)], progress=False)
    binary = tmp_path / "latin1.txt"
    binary.write_bytes("줄 하나\n".encode() + "caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.txt:2: not valid UTF-8"):
        train_tokenizer(tmp_path / "x", sources=[str(binary)], progress=False)
    assert not (tmp_path / "x").exists()  # nothing half-written


def test_failed_training_leaves_previous_output(tmp_path):
    out = tmp_path / "tok"
    train_tokenizer(out, texts=MIXED * 5, vocab_size=300, progress=False)
    before = (out / "tokenizer.json").read_bytes()
    with pytest.raises(DataError, match="no such file"):
        train_tokenizer(out, sources=[str(tmp_path / "nope.txt")], progress=False)
    with pytest.raises(DataError, match="empty"):
        train_tokenizer(out, texts=["", ""], progress=False)
    assert (out / "tokenizer.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok"]  # no temp dirs left behind


def test_config_errors_are_reported_together(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("vocab_size: 100\nnormalization: nfd\nsources: [{path: a.txt, n: 5}]\ncolour: red\n")
    with pytest.raises(ConfigError) as e:
        load_config(cfg, TokenizerTrainConfig)
    msg = str(e.value)
    for key in ("vocab_size: must be at least 261", "normalization:", "colour: unknown key"):
        assert key in msg, msg


def test_shipped_configs_load():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs" / "tokenizer"
    kinds = {}
    for path in sorted(root.glob("*.yaml")):
        cfg = load_config(path, TokenizerTrainConfig)
        kinds[path.name] = cfg.pre_tokenizer
    # the demo tokenizer is exportable to GGUF (llama.cpp `llama-bpe`); `korean` stays a trainer option
    assert kinds == {"ko_bpe.yaml": "llama3", "plain_bpe.yaml": "gpt2", "ko_bpe_help.yaml": "llama3"}


def test_file_kinds_txt_gz_parquet_and_directory(tmp_path):
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tmp_path / "corpus"
    d.mkdir()
    (d / "a.txt").write_text("첫 줄\n둘째 줄\n", encoding="utf-8")
    with gzip.open(d / "b.txt.gz", "wt", encoding="utf-8") as f:
        f.write("압축된 텍스트\n")
    pq.write_table(pa.table({"body": ["파케이 문서 하나", None, "둘"]}), d / "c.parquet")
    (d / "notes.csv").write_text("ignored,file\n")
    s = train_tokenizer(tmp_path / "t", sources=[str(d)], text_field="body", vocab_size=300, progress=False)
    src = s["sources"][0]
    assert [p["path"].rsplit("/", 1)[1] for p in src["files"]] == ["a.txt", "b.txt.gz", "c.parquet"]
    assert src["documents"] == 4  # a.txt, b.txt.gz, and the two non-null parquet rows
    assert src["chars"] == len("첫 줄\n둘째 줄\n") + len("압축된 텍스트\n") + len("파케이 문서 하나") + len("둘")
    with pytest.raises(DataError, match=r"c\.parquet: no column 'text'"):
        train_tokenizer(tmp_path / "u", sources=[str(d / "c.parquet")], progress=False)


@pytest.mark.parametrize("form", ["nfkc", "none"])
def test_other_normal_forms(tmp_path, form):
    from transformers import AutoTokenizer

    train_tokenizer(tmp_path / form, texts=MIXED * 3, vocab_size=300, normalization=form, progress=False)
    tok = AutoTokenizer.from_pretrained(str(tmp_path / form))
    decomposed = unicodedata.normalize("NFD", "한글 ①항 ＡＢＣ")
    back = tok.decode(tok(decomposed)["input_ids"])
    if form == "nfkc":  # compatibility characters folded: exact only on NFKC text
        assert back == unicodedata.normalize("NFKC", decomposed) == "한글 1항 ABC"
    else:  # no normalizer at all: every string round-trips byte for byte, even NFD jamo
        assert back == decomposed


# ---------------------------------------------------------------- llama.cpp-exportable modes
# The reference: llama.cpp's own regexes for each `tokenizer.ggml.pre` name, copied from
# src/llama-vocab.cpp (llm_tokenizer_bpe), applied the way its unicode_regex_split does: each regex
# cuts every piece into matches and the gaps between them. Independent of krllm's patterns.
_LC = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
LLAMA_CPP_REGEXES = {
    "gpt-2": [r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"],
    "qwen2": [_LC + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"],
    "llama-bpe": [_LC + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"],
}
TRICKY = MIXED + [
    "", " ", "\n", "  \n\t ", "a", "가", "1", "12345678901", " 0.5%를 ", "제37조제2항에 따라", "(주)한국 'Calc'에서 F2키",
    "It's 3’s “따옴표” and 'll", "Ctrl+Shift+F10을 누르십시오.", "x²+y³=z¹⁰ ½ Ⅻ ①②", "탭\t\t다음 \r\n\r\n줄",
    "ᄒᆞᆫ글 옛한글 ㄱㄴㄷ ㅏㅑ", "🇰🇷🇺🇸 👩🏽‍💻 ❤️ #1위!!!", "​제로폭\u200b공백\ufeffBOM", "ＡＢＣ１２３ ｶﾀｶﾅ",
]


def _llama_cpp_split(text: str, name: str) -> list[str]:
    import regex

    pieces = [text] if text else []
    for pattern in LLAMA_CPP_REGEXES[name]:
        out = []
        for piece in pieces:
            pos = 0
            for m in regex.finditer(pattern, piece):
                if m.start() > pos:
                    out.append(piece[pos:m.start()])
                if m.end() > m.start():
                    out.append(m.group())
                pos = m.end()
            if pos < len(piece):
                out.append(piece[pos:])
        pieces = out
    return pieces


@pytest.mark.parametrize("kind", ["gpt2", "qwen2", "llama3"])
def test_split_equals_llama_cpp_reference(kind):
    from krllm.tokenizer.pretokenize import LLAMA_CPP_PRE

    name = LLAMA_CPP_PRE[kind]
    for text in TRICKY:
        assert split_preview(text, kind) == _llama_cpp_split(text, name), text
    rng = random.Random(kind)  # random strings over the characters where the regexes differ
    alphabet = list("가나다 한국어\n\t\r 0123456789abcXYZ'.,!?()-+:;/·…“”ㄱㅏ😀é\u3000\u00a0") + ["'s", "'LL", "  "]
    for _ in range(500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30)))
        assert split_preview(text, kind) == _llama_cpp_split(text, name), repr(text)
    assert LLAMA_CPP_PRE["korean"] is None  # ours has no llama.cpp equivalent: export must not claim one


@pytest.fixture(scope="module")
def char_dir(tmp_path_factory):
    """The recommended mode (llama3 split, merges over characters), trained on the real built-in corpus."""
    out = tmp_path_factory.mktemp("tok") / "llama3_char"
    train_tokenizer(out, vocab_size=1500, pre_tokenizer="llama3", merge_unit="char", progress=False,
                    sources=["builtin:ko-law", {"path": "builtin:npc", "n": 200}, {"path": "builtin:math", "n": 200}])
    return out


def test_char_mode_directory_and_llama_cpp_name(char_dir):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    summary = json.loads((char_dir / "summary.json").read_text())
    assert summary["vocab_size"] == 1500 and summary["llama_cpp_pre"] == "llama-bpe"
    assert summary["merge_unit"] == "char" and summary["characters"] > 500
    tj = json.loads((char_dir / "tokenizer.json").read_text())
    assert tj["model"]["ignore_merges"] is True  # llama.cpp's llama-bpe skips merges for whole-vocab pieces too
    assert tj["pre_tokenizer"]["pretokenizers"][1]["use_regex"] is False
    hf, raw = AutoTokenizer.from_pretrained(str(char_dir)), Tokenizer.from_file(str(char_dir / "tokenizer.json"))
    for token, i in SPECIAL_IDS.items():
        assert hf.convert_tokens_to_ids(token) == i
    for text in TRICKY:
        ids = hf(text, add_special_tokens=False)["input_ids"]
        assert ids == raw.encode(text, add_special_tokens=False).ids, text
        if unicodedata.is_normalized("NFC", text):
            assert hf.decode(ids) == text, text
        # what BPE saw: exactly the llama.cpp pieces (offsets of the pre-tokenizer, before byte mapping)
        if text and unicodedata.is_normalized("NFC", text):
            pieces = [text[a:b] for _, (a, b) in raw.pre_tokenizer.pre_tokenize_str(text)]
            assert pieces == _llama_cpp_split(text, "llama-bpe"), text


def test_char_mode_round_trip_property(char_dir):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(char_dir))
    rng = random.Random(1)
    for i in range(400):  # random code points of any plane, or tricky strings glued together
        if i % 2:
            text = "".join(chr(c) for c in (rng.randint(0, 0x2FFFF) for _ in range(rng.randint(0, 40)))
                           if not 0xD800 <= c <= 0xDFFF)
        else:
            text = rng.choice([" ", "", "\n", "  "]).join(rng.sample(TRICKY, 3))
        back = hf.decode(hf(text, add_special_tokens=False)["input_ids"])
        assert back == unicodedata.normalize("NFC", text), repr(text)


def test_char_mode_tokens_never_cross_a_character(char_dir):
    """Every learned token is whole characters, or the UTF-8 prefix of one character (how a character
    is assembled); byte-level training also learns tokens that end mid-syllable and start mid-next."""
    from krllm.tokenizer.pretokenize import _bytes_to_unicode

    dec = {v: k for k, v in _bytes_to_unicode().items()}

    def bad_tokens(tok_dir):
        vocab = json.loads((tok_dir / "tokenizer.json").read_text())["model"]["vocab"]
        bad = []
        for tok in vocab:
            raw = bytes(dec[c] for c in tok) if all(c in dec for c in tok) else None
            if raw is None or len(raw) == 1:
                continue
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                lead_only_prefix = raw[0] >= 0xC0 and all(0x80 <= b < 0xC0 for b in raw[1:])
                if not lead_only_prefix:
                    bad.append(tok)
        return bad

    assert bad_tokens(char_dir) == []
    # the byte-level trainer on the same corpus does learn such tokens (what char mode avoids)
    byte_dir = char_dir.parent / "byte"
    train_tokenizer(byte_dir, vocab_size=1500, pre_tokenizer="llama3", merge_unit="byte", progress=False,
                    sources=["builtin:ko-law", {"path": "builtin:npc", "n": 200}, {"path": "builtin:math", "n": 200}])
    assert len(bad_tokens(byte_dir)) > 20


def test_char_mode_vocab_too_small_for_the_alphabet(tmp_path):
    from krllm.errors import KrllmError

    with pytest.raises(KrllmError, match="merge_unit: char"):
        train_tokenizer(tmp_path / "t", texts=["".join(chr(0xAC00 + i) for i in range(300))] * 3, vocab_size=300,
                        merge_unit="char", pre_tokenizer="qwen2", min_frequency=1, progress=False)
    assert not (tmp_path / "t").exists()


def test_long_runs_are_cut_for_training_only(tmp_path):
    """A line of 3,000 Hangul syllables without a space (the trainer's cost grows with the square of one
    word's length): cut into MAX_RUN pieces for the trainer, reported, and still encoded exactly."""
    from transformers import AutoTokenizer

    from krllm.tokenizer.train import MAX_RUN, split_long_runs

    rng = random.Random(0)
    run = "".join(chr(0xAC00 + rng.randrange(300)) for _ in range(3000))
    text = f"앞 문장. {run} 뒤 문장!\n다음 줄"
    counter: dict = {}
    pieces = list(split_long_runs([text, "보통 문장은 그대로"], counter))
    assert "".join(pieces[:-1]) == text and pieces[-1] == "보통 문장은 그대로"
    assert counter == {"runs": 1} and max(len(w) for p in pieces for w in p.split()) == MAX_RUN
    summary = train_tokenizer(tmp_path / "tok", texts=[text, "짧은 문장 하나."], vocab_size=600, progress=False)
    assert summary["long_runs_split"] == 1
    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert tok.decode(tok(text)["input_ids"]) == text
