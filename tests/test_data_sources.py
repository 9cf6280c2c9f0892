"""krllm.data.sources: the one reader behind tokenizer training and `krllm data prepare`."""

from __future__ import annotations

import gzip
import json

import pytest

from krllm.data.sources import SourceStats, expand_source, iter_jsonl, iter_texts, iter_values
from krllm.errors import DataError


@pytest.fixture()
def corpus(tmp_path):
    d = tmp_path / "c"
    (d / ".hidden").mkdir(parents=True)
    (d / "sub").mkdir()
    (d / "a.txt").write_bytes(b"\xef\xbb\xbf" + "첫 문단\n이어짐\n\n둘째 문단\n".encode())
    with gzip.open(d / "sub" / "b.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps({"text": "제이슨"}, ensure_ascii=False) + "\n\n" + json.dumps({"text": 3}) + "\n")
    (d / ".hidden" / "x.txt").write_text("숨김\n")
    (d / "notes.csv").write_text("a,b\n")
    return d


def test_a_directory_means_the_same_files_for_every_caller(corpus):
    names = [p.relative_to(corpus).as_posix() for p, _ in expand_source(str(corpus))]
    assert names == ["a.txt", "sub/b.jsonl.gz"]  # hidden and unknown extensions skipped
    assert [p.name for p, _ in expand_source(str(corpus / "*"))] == ["a.txt"]  # glob: known formats
    assert [p.name for p, _ in expand_source(str(corpus / "*"), fmt="txt")] == ["a.txt", "notes.csv"]
    with pytest.raises(DataError, match="no such file, directory or glob match"):
        expand_source(str(corpus / "nope*.txt"))


def test_txt_modes_and_values(corpus):
    a = corpus / "a.txt"
    assert list(iter_values(a, "txt")) == [(1, "첫 문단\n이어짐\n"), (4, "둘째 문단\n")]  # BOM dropped
    assert list(iter_values(a, "txt", txt_mode="file")) == [(1, "첫 문단\n이어짐\n\n둘째 문단\n")]
    assert list(iter_values(a, "txt", txt_mode="block")) == [(1, "첫 문단\n이어짐\n\n둘째 문단\n")]
    values = list(iter_values(corpus / "sub" / "b.jsonl.gz", "jsonl"))
    assert values == [(1, "제이슨"), (3, 3)]  # the caller decides that 3 is not text


def test_bad_records_raise_or_go_to_on_bad(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"text": "ok"}\n[1]\n{"body": 1}\n{not json\n{"text": "\xff"}\n')
    seen = []
    assert [v for _, v in iter_values(path, "jsonl", on_bad=seen.append)] == ["ok"]
    assert seen == [f"{path}:2: expected a JSON object, got list",
                    f"{path}:3: missing field 'text' (keys: body); set text_field",
                    seen[2], f"{path}:5: not valid UTF-8 (invalid start byte at byte 10 of the line)"]
    assert seen[2].startswith(f"{path}:4: invalid JSON (")
    with pytest.raises(DataError, match=r"m\.jsonl:2: expected a JSON object"):
        list(iter_values(path, "jsonl"))
    with pytest.raises(DataError, match=r"nope\.jsonl: file not found"):
        list(iter_jsonl(tmp_path / "nope.jsonl"))


def test_iter_texts_counts_and_renders_messages_only_when_asked(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"text": [{"role": "user", "content": "안녕"}]}, ensure_ascii=False) + "\n")
    st = SourceStats(str(path))
    assert list(iter_texts(str(path), render_messages=lambda ms: ms[0]["content"], stats=st)) == ["안녕"]
    assert (st.documents, st.chars, len(st.files)) == (1, 2, 1)
    with pytest.raises(DataError, match=r"chat\.jsonl:1: field 'text' must be a string, got list"):
        list(iter_texts(str(path)))
