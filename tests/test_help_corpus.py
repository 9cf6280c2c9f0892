"""builtin:ko-help / builtin:ko-en-help: .deb reading, help-page parsing, pairing, the split, the cache.

Everything runs offline on tiny .deb files built here; one `slow` test fetches the real packages."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile

import pytest

from krllm.data.sets import _deb
from krllm.data.sets import help_corpus as H
from krllm.errors import DataError


# ---------------------------------------------------------------- building tiny .deb files

def ar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    out = bytearray(b"!<arch>\n")
    for name, data in members:
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
        out += data + (b"\n" if len(data) % 2 else b"")
    return bytes(out)


def make_deb(path, files: dict[str, str], compression: str = "xz") -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=f"w:{compression}") as tar:
        for name, text in files.items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo("./" + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(ar_bytes([("debian-binary", b"2.0\n"), ("control.tar.xz", b"x"),
                               (f"data.tar.{compression}", buf.getvalue())]))


def page(body: str, lang: str = "ko") -> str:
    return (f'<!DOCTYPE html><html lang="{lang}"><head><title>t</title><script>var x = "<p>";</script></head>'
            f'<body><header><p dir="auto">LibreOffice 7.4 Help</p></header><div id="DisplayArea">{body}'
            '<p id="bm_module" dir="auto"></p></div></body></html>')


def first_page(heldout: bool, start: int = 0) -> str:
    i = start
    while H.is_heldout(f"text/shared/p{i}.html") != heldout:
        i += 1
    return f"text/shared/p{i}.html"


TRAIN, HELD = first_page(False), first_page(True)
TRAIN2 = first_page(False, int(TRAIN.removeprefix("text/shared/p").removesuffix(".html")) + 1)

KO = {
    TRAIN: """<h1 id="hd_id1"><a name="x"></a>자동 URL 인식 끄기</h1>
<p id="par_id2" class="paragraph">메뉴 <span class="switchinline"><span hidden="true" class="MAC">LibreOffice - 환경 설정</span><span hidden="true" id="defaulttext1">도구 - 옵션</span></span>을
   선택합니다.<br>다음 줄 &amp; 끝.</p>
<p id="par_id3">The following texts are changed to hyperlinks:</p>
<p id="par_id4">=SUM(1;2)</p>
<div class="embedded"><p class="embedded">임베드된 문장</p></div>
<div class="bascode"><pre><code>Dim a As Integer</code></pre></div>
<p id="par_id5">예:</p>
<p id="par_id5">같은 아이디</p>""",
    TRAIN2: """<p id="par_id1">예:</p><p id="par_id9">번역된 문장입니다.</p>""",
    HELD: """<h2 id="hd_id7">보류 페이지</h2><p id="par_id8">예:</p><p id="par_id9">번역된 문장입니다.</p>
<p id="par_id10">Not translated here.</p>""",
}
EN = {
    TRAIN: """<h1 id="hd_id1"><a name="x"></a>Turning off Automatic URL Recognition</h1>
<p id="par_id2">Choose <span class="switchinline"><span hidden="true" class="MAC">LibreOffice - Preferences</span><span hidden="true" id="d">Tools - Options</span></span>.</p>
<p id="par_id3">The following texts are changed to hyperlinks:</p><p id="par_id4">=SUM(1;2)</p>
<p id="par_id5">Example:</p><p id="par_id5">Same id</p>""",
    TRAIN2: """<p id="par_id1">Example:</p><p id="par_id9">A translated sentence.</p>""",
    HELD: """<h2 id="hd_id7">Held page</h2><p id="par_id8">Example:</p><p id="par_id9">Another sentence.</p>
<p id="par_id10">Not translated here.</p>""",
}


def make_debs(d, compression="xz"):
    ko, en = d / "libreoffice-help-ko_4%3a7.4.7-1_all.deb", d / "libreoffice-help-en-us_4%3a7.4.7-1_all.deb"
    make_deb(ko, {H.HELP_TEXT["ko"] + p.removeprefix("text/"): page(b) for p, b in KO.items()}
             | {"usr/share/libreoffice/help/ko/noscript.html": "<p id='par_id1'>x</p>"}, compression)
    make_deb(en, {H.HELP_TEXT["en"] + p.removeprefix("text/"): page(b, "en-US") for p, b in EN.items()}, compression)
    return ko, en


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KRLLM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture()
def debs(tmp_path):
    (tmp_path / "debs").mkdir()
    return make_debs(tmp_path / "debs")


# ---------------------------------------------------------------- ar / tar

def test_ar_members_with_odd_sizes_and_errors(tmp_path):
    data = ar_bytes([("debian-binary", b"2.0\n"), ("odd", b"abc"), ("data.tar.xz/", b"xyz!")])
    assert _deb.read_ar(data) == {"debian-binary": b"2.0\n", "odd": b"abc", "data.tar.xz": b"xyz!"}
    with pytest.raises(DataError, match="not a Debian package"):
        _deb.read_ar(b"PK\x03\x04", "x.deb")
    with pytest.raises(DataError, match="truncated"):
        _deb.read_ar(data[:-3], "x.deb")
    with pytest.raises(DataError, match="corrupt ar member header"):
        _deb.read_ar(data[:8] + b"garbage" * 10, "x.deb")


@pytest.mark.parametrize("compression", ["xz", "gz"])
def test_deb_files_are_read_without_unpacking(tmp_path, compression):
    ko, _ = make_debs(tmp_path, compression)
    got = dict(_deb.iter_deb_files(ko, H.HELP_TEXT["ko"], ".html"))
    assert sorted(got) == sorted(H.HELP_TEXT["ko"] + p.removeprefix("text/") for p in KO)  # noscript.html: outside
    assert "자동 URL 인식 끄기" in got[H.HELP_TEXT["ko"] + TRAIN.removeprefix("text/")].decode()
    assert _deb.deb_version(ko) == "4:7.4.7-1"
    (tmp_path / "nodata.deb").write_bytes(ar_bytes([("debian-binary", b"2.0\n")]))
    with pytest.raises(DataError, match="no data.tar"):
        list(_deb.iter_deb_files(tmp_path / "nodata.deb", ""))


# ---------------------------------------------------------------- HTML

def test_page_parser_keeps_id_paragraphs_and_the_default_variant():
    paras = H.parse_page(page(KO[TRAIN]))
    assert paras == [
        ("hd_id1", "자동 URL 인식 끄기"),
        ("par_id2", "메뉴 도구 - 옵션을 선택합니다. 다음 줄 & 끝."),  # MAC variant dropped, <br>, entity, spaces
        ("par_id3", "The following texts are changed to hyperlinks:"),
        ("par_id4", "=SUM(1;2)"),
        ("par_id5", "예:"),
        ("par_id5#2", "같은 아이디"),  # a repeated id is numbered, so both languages pair by position
    ]  # no header, script, embedded snippet, code block or bm_ paragraph
    assert [H.lang_of(t) for _, t in paras] == ["ko", "ko", "en", "en", "ko", "ko"]
    assert H.lang_of("= 1 + 2") == "none"


# ---------------------------------------------------------------- build, pairs, split

def test_build_pairs_split_and_text(cache, debs):
    out = H.fetch(debs=list(debs), log=lambda m: None)
    assert out == cache / H.CACHE_NAME
    m = H.read_manifest()
    assert m["source"]["ko"]["version"] == "4:7.4.7-1"
    assert m["source"]["ko"]["sha256"] == hashlib.sha256(debs[0].read_bytes()).hexdigest()
    c = m["counts"]
    assert (c["pages"], c["pages_heldout"], c["paragraphs"]) == (3, 1, 12)
    assert c["paragraphs_by_lang"] == {"ko": 9, "en": 3, "none": 0}
    assert c["pairs_raw"] == 9 and c["pairs"] == {"train": 5, "heldout": 1}

    train = H.help_pairs("train")
    assert train[:2] == [{"id": f"{TRAIN}#hd_id1", "ko": "자동 URL 인식 끄기", "en": "Turning off Automatic URL Recognition"},
                         {"id": f"{TRAIN}#par_id2", "ko": "메뉴 도구 - 옵션을 선택합니다. 다음 줄 & 끝.",
                          "en": "Choose Tools - Options."}]
    assert {"ko": "같은 아이디", "en": "Same id"} == {k: train[3][k] for k in ("ko", "en")}
    assert sum(p["ko"] == "예:" for p in train) == 1  # the same pair on two train pages: kept once
    # held out: "예:/Example:" and "번역된 문장입니다." occur in train pages (leak) -> only the heading stays
    assert H.help_pairs("heldout") == [{"id": f"{HELD}#hd_id7", "ko": "보류 페이지", "en": "Held page"}]
    train_pages = {p["id"].split("#")[0] for p in train}
    assert HELD not in train_pages and train_pages == {TRAIN, TRAIN2}

    text = (out / "ko-help.txt").read_text(encoding="utf-8")
    assert "보류" not in text and "The following texts" not in text  # held-out page, untranslated paragraph
    assert list(H.help_documents()) == [
        ("ko-help/0", "자동 URL 인식 끄기\n메뉴 도구 - 옵션을 선택합니다. 다음 줄 & 끝.\n예:\n같은 아이디"),
        ("ko-help/1", "예:\n번역된 문장입니다.")]
    rows = list(H.paragraphs())
    assert rows[2] == {"page": TRAIN, "id": "par_id3", "ko": "The following texts are changed to hyperlinks:",
                       "en": "The following texts are changed to hyperlinks:", "lang": "en"}
    with pytest.raises(DataError, match="split 'test'"):
        H.help_pairs("test")


def test_split_is_deterministic_and_about_five_percent():
    pages = [f"text/x/{i}.html" for i in range(20000)]
    held = [p for p in pages if H.is_heldout(p)]
    assert 0.04 < len(held) / len(pages) < 0.06
    assert held == [p for p in pages if int(hashlib.sha256(p.encode()).hexdigest()[:8], 16) % 100 < 5]
    assert H.is_heldout("text/shared/guide/autocorr_url.html") is False  # fixed across machines and versions


def test_sample_pairs_seeded(cache, debs):
    H.fetch(debs=list(debs), log=lambda m: None)
    a, b = H.sample_pairs("train", seed=1), H.sample_pairs("train", seed=1)
    assert a == b and sorted(p["id"] for p in a) == sorted(p["id"] for p in H.help_pairs("train"))
    assert H.sample_pairs("train", n=3, seed=1) == a[:3]
    assert {p["id"] for p in H.sample_pairs("heldout")}.isdisjoint(p["id"] for p in a)


# ---------------------------------------------------------------- cache: reuse, atomicity, errors

def test_cache_is_reused_and_force_rebuilds(cache, debs, monkeypatch):
    calls = []

    def fake_download(dest):
        calls.append(dest)
        return {"ko": shutil.copy(debs[0], dest), "en": shutil.copy(debs[1], dest)}

    monkeypatch.setattr(H, "_download", fake_download)
    logs = []
    H.fetch(log=logs.append)
    assert len(calls) == 1 and "apt-get download" in logs[0]
    assert H.help_pairs("train") and list(H.help_documents())  # readers reuse it: no second download
    H.fetch()
    assert len(calls) == 1
    H.fetch(force=True, log=logs.append)
    assert len(calls) == 2
    assert sorted(os.listdir(cache)) == [H.CACHE_NAME]  # downloaded .debs and temporaries are gone


def test_interrupted_fetch_leaves_no_half_cache(cache, tmp_path, monkeypatch):
    bad = tmp_path / "libreoffice-help-ko_1_all.deb"
    bad.write_bytes(b"!<arch>\n" + b"x" * 100)
    en = tmp_path / "libreoffice-help-en-us_1_all.deb"
    en.write_bytes(bad.read_bytes())
    with pytest.raises(DataError, match="corrupt ar member"):
        H.fetch(debs=[bad, en], log=lambda m: None)
    assert os.listdir(cache) == []

    def interrupted(dest):
        raise KeyboardInterrupt

    monkeypatch.setattr(H, "_download", interrupted)
    with pytest.raises(KeyboardInterrupt):
        H.fetch(log=lambda m: None)
    assert os.listdir(cache) == []


def test_no_apt_get_says_what_to_do(cache, tmp_path, monkeypatch):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(DataError) as e:
        H.fetch(log=lambda m: None)
    msg = str(e.value)
    assert "apt-get is not on PATH" in msg and "--deb" in msg and "builtin:ko-law" in msg
    assert "packages.debian.org" in msg
    assert os.listdir(cache) == []


def fake_apt(bindir, script: str) -> None:
    bindir.mkdir(exist_ok=True)
    p = bindir / "apt-get"
    p.write_text("#!/bin/sh\n" + script)
    p.chmod(p.stat().st_mode | stat.S_IEXEC)


def test_apt_get_download_is_called_and_its_failures_explained(cache, tmp_path, debs, monkeypatch):
    bindir = tmp_path / "bin"
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    fake_apt(bindir, 'echo "E: Unable to locate package $2" >&2; exit 100\n')
    with pytest.raises(DataError, match=r"(?s)run `sudo apt-get update` once.*Unable to locate package "
                                        r"libreoffice-help-ko.*builtin:ko-law"):
        H.fetch(log=lambda m: None)
    # a working apt-get: `apt-get download PKG...` writes PKG_VERSION_all.deb into the working directory
    fake_apt(bindir, f'[ "$1" = download ] || exit 1\necho "$@" > "{tmp_path}/args"\ncp {debs[0]} {debs[1]} .\n')
    H.fetch(log=lambda m: None)
    assert (tmp_path / "args").read_text().split() == ["download", "libreoffice-help-ko", "libreoffice-help-en-us"]
    assert H.read_manifest()["counts"]["pairs"] == {"train": 5, "heldout": 1}


def test_deb_arguments_are_checked(cache, debs, tmp_path):
    with pytest.raises(DataError, match="also pass the libreoffice-help-en-us"):
        H.fetch(debs=[debs[0]])
    other = tmp_path / "foo_1_all.deb"
    other.write_bytes(b"")
    with pytest.raises(DataError, match="expected a file named"):
        H.fetch(debs=[debs[0], other])


# ---------------------------------------------------------------- the builtin: machinery

def test_builtin_specs_reach_every_reader(cache, debs):
    from krllm.data.sets.builtin import builtin_files, builtin_inputs
    from krllm.data.sets.records import load_examples
    from krllm.data.sources import SourceStats, expand_source, iter_texts, iter_values
    from krllm.pipeline.state import external_inputs

    H.fetch(debs=list(debs), log=lambda m: None)
    [(path, name)] = expand_source("builtin:ko-help")
    assert path == cache / H.CACHE_NAME / "ko-help.txt" and name.startswith("builtin:ko-help/")
    # `krllm data prepare` reads it as txt in paragraph mode: one document per page
    assert [t for _, t in iter_values(path, "txt")] == ["자동 URL 인식 끄기\n메뉴 도구 - 옵션을 선택합니다. 다음 줄 & 끝.\n예:\n"
                                                        "같은 아이디\n", "예:\n번역된 문장입니다.\n"]
    stats = SourceStats("builtin:ko-help")
    assert list(iter_texts("builtin:ko-help", stats=stats)) == [t for _, t in H.help_documents()]
    assert stats.documents == 2

    recs = load_examples("builtin:ko-en-help:heldout", "sft")
    assert recs == [{"messages": [{"role": "user", "content": f"{H.TRANSLATE_KO_EN}\n\n보류 페이지"},
                                  {"role": "assistant", "content": "Held page"}]}]
    assert len(load_examples("builtin:ko-en-help", "sft")) == 5  # n=None: the whole train split
    assert len(load_examples("builtin:ko-en-help:train", "sft", n=2, seed=3)) == 2
    assert len(load_examples("builtin:npc", "sft")) == 1000  # generated sets keep their default size
    with pytest.raises(DataError, match="builtin:ko-en-help :train or :heldout"):
        load_examples("builtin:ko-en-help:test", "sft")
    with pytest.raises(DataError, match="cannot feed dpo"):
        load_examples("builtin:ko-en-help", "dpo")

    assert builtin_inputs("builtin:ko-en-help:heldout") == [cache / H.CACHE_NAME / "pairs-heldout.jsonl"]
    assert builtin_files("builtin:ko-help") == [path]
    with pytest.raises(ValueError, match="builtin:ko-law, builtin:ko-help"):
        builtin_files("builtin:ko-nope")
    found = external_inputs({"a": "builtin:ko-help", "b": "builtin:ko-en-help"}, cache / "run")
    assert set(found) == {"builtin:ko-help", "builtin:ko-en-help"}


def test_cli_fetch_with_deb_files(cache, debs):
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-m", "krllm", "data", "fetch", "ko-help", "--deb", str(debs[0]),
                          "--deb", str(debs[1])], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert "5 train + 1 held-out pairs" in out.stdout and "MPL-2.0" in out.stdout
    assert json.loads((cache / H.CACHE_NAME / "manifest.json").read_text())["counts"]["pages"] == 3


# ---------------------------------------------------------------- the real packages

@pytest.mark.slow
def test_real_packages(tmp_path, monkeypatch):
    if shutil.which("apt-get") is None:
        pytest.skip("apt-get not available (not Debian/Ubuntu): builtin:ko-help cannot be fetched here")
    probe = subprocess.run(["apt-get", "download", "--print-uris", *H.PACKAGES.values()], capture_output=True,
                           text=True)
    if probe.returncode != 0 or ".deb" not in probe.stdout:
        pytest.skip(f"apt cannot locate the packages (no package lists? run apt-get update): {probe.stderr.strip()}")
    monkeypatch.setenv("KRLLM_CACHE", str(tmp_path / "cache"))
    try:
        H.fetch(log=lambda m: None)
    except DataError as e:
        if "Failed to fetch" in str(e) or "Temporary failure" in str(e) or "Could not resolve" in str(e):
            pytest.skip(f"no network: {e}")
        raise
    c = H.read_manifest()["counts"]
    assert 2300 <= c["pages"] <= 2900  # 2,560 in 7.4.7 (Debian 12)
    assert 400_000 <= c["hangul_syllables"] <= 800_000  # 561,120
    assert 2_000_000 <= c["chars_all_paragraphs"] <= 4_000_000  # 2,835,265, ~70% of it untranslated English
    assert 20_000 <= c["pairs_raw"] <= 40_000  # 27,910
    assert 12_000 <= c["pairs"]["train"] <= 30_000 and 400 <= c["pairs"]["heldout"] <= 2_000  # 17,559 + 892
    held = {p["ko"] for p in H.help_pairs("heldout")}
    assert held.isdisjoint(p["ko"] for p in H.help_pairs("train"))


def test_optional_source_is_left_out_where_the_fetch_fails(cache, tmp_path, monkeypatch, capsys):
    """No apt-get: `optional: true` leaves builtin:ko-help out with a warning (tokenizer and data
    prepare), a required one stops with the fetch's own advice, and nothing left at all is an error."""
    from krllm.data.prepare.config import PrepareConfig
    from krllm.data.prepare.readers import resolve_sources
    from krllm.tokenizer.train import train_tokenizer

    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    law = "builtin:ko-law"
    summary = train_tokenizer(tmp_path / "tok", progress=False, vocab_size=400,
                              sources=[{"path": "builtin:ko-help", "optional": True}, law])
    assert [s["spec"] for s in summary["sources"]] == [law]
    assert "optional source builtin:ko-help left out" in capsys.readouterr().err

    cfg = PrepareConfig(sources=[{"path": "builtin:ko-help", "optional": True}, law], tokenizer=str(tmp_path / "tok"),
                        out_dir=str(tmp_path / "data"))
    assert {f.name.split("/")[0] for f in resolve_sources(cfg)} == {law}
    assert "apt-get is not on PATH" in capsys.readouterr().err

    with pytest.raises(DataError, match="apt-get is not on PATH"):
        resolve_sources(cfg.model_copy(update={"sources": [cfg.sources[0].model_copy(update={"optional": False})]}))
    with pytest.raises(DataError, match="every one is optional"):
        resolve_sources(cfg.model_copy(update={"sources": cfg.sources[:1]}))

    from krllm.pipeline.state import external_inputs  # a pipeline's fingerprint does not stop on it either
    assert set(external_inputs({"sources": ["builtin:ko-help", law]}, tmp_path / "run")) == {law}
