"""Inputs a Windows editor or an unusual umask produces are handled like ordinary ones (issue 15)."""

import json

from krllm.data.sources import iter_texts
from krllm.tokenizer.train import train_tokenizer

BOM = b"\xef\xbb\xbf"


def test_bom_text_and_jsonl_train_the_same_tokenizer_as_without(tmp_path):
    text = "대한민국은 민주공화국이다.\n\n모든 국민은 법 앞에 평등하다.\n"
    (tmp_path / "bom.txt").write_bytes(BOM + text.encode("utf-8"))
    (tmp_path / "plain.txt").write_text(text, encoding="utf-8")
    (tmp_path / "bom.jsonl").write_bytes(BOM + (json.dumps({"text": text}, ensure_ascii=False) + "\n").encode())
    assert list(iter_texts(str(tmp_path / "bom.txt"))) == list(iter_texts(str(tmp_path / "plain.txt")))
    assert list(iter_texts(str(tmp_path / "bom.jsonl"))) == [text]
    train_tokenizer(tmp_path / "a", sources=[str(tmp_path / "bom.txt")], vocab_size=300, progress=False)
    train_tokenizer(tmp_path / "b", sources=[str(tmp_path / "plain.txt")], vocab_size=300, progress=False)
    vocab = (tmp_path / "a" / "tokenizer.json").read_text(encoding="utf-8")
    assert "\ufeff" not in vocab and vocab == (tmp_path / "b" / "tokenizer.json").read_text(encoding="utf-8")
