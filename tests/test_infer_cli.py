"""TextStream (incremental detokenization, stop strings) and the `krllm generate` / `krllm chat` commands."""

import subprocess
import sys

import pytest

from krllm.cli import main
from krllm.infer.generator import Generator
from krllm.infer.sampling import SamplingParams
from krllm.infer.testing import tiny_model_dir
from krllm.infer.startup import describe, make_engine
from krllm.infer.textstream import TextStream
from krllm.model.load import load

GREEDY = SamplingParams(temperature=0)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("cli") / "tiny")


@pytest.fixture(scope="module")
def lm(model_dir):
    return load(model_dir, device="cpu", dtype="auto")  # what the commands load by default


def test_auto_dtype_is_bf16_exactly_where_the_cpu_multiplies_it_natively(model_dir, lm):
    import torch

    from krllm.device import cpu_supports_bf16
    from krllm.errors import KrllmError

    want = torch.bfloat16 if cpu_supports_bf16() else torch.float32
    assert next(lm.model.parameters()).dtype == want
    assert "auto" in lm.dtype_reason and "auto" in describe(lm, make_engine(lm))
    saved = load(model_dir, device="cpu")
    assert saved.dtype == torch.float32 and "as saved" in describe(saved, make_engine(saved))
    with pytest.raises(KrllmError, match="unknown dtype 'fp8'"):
        load(model_dir, device="cpu", dtype="fp8")


def test_the_start_up_line_says_which_decode_path_runs(lm, monkeypatch):
    from krllm.infer import native

    expected = "decoding: C step" if native.library() is not None else "decoding: PyTorch"
    assert expected in describe(lm, make_engine(lm, max_batch=2))
    monkeypatch.setenv("KRLLM_NATIVE", "0")
    native.library.cache_clear()
    try:
        assert "decoding: PyTorch" in describe(lm, make_engine(lm, max_batch=2))
    finally:
        monkeypatch.delenv("KRLLM_NATIVE")
        native.library.cache_clear()


def test_text_stream_pieces_add_up_to_the_full_decode(lm):
    text = "대한민국은 민주공화국이다. 모험가여, 환영하네! Hello 😀 끝"
    ids = lm.encode(text)
    ts = TextStream(lm.tokenizer)
    pieces = [ts.push(t) for t in ids] + [ts.flush()]
    assert "".join(pieces) == lm.decode(ids) == text
    assert all("\ufffd" not in p for p in pieces)  # a split Hangul syllable / emoji is never shown half-done
    assert sum(1 for p in pieces if p) > 5


def test_text_stream_stop_string_split_across_tokens(lm):
    text = "사과 3개와 배 5개가 있습니다. 모두 몇 개일까요?"
    ids = lm.encode(text)
    ts = TextStream(lm.tokenizer, stop=["배 5", "없는 말"])
    out = ""
    for t in ids:
        out += ts.push(t)
        if ts.stopped:
            break
    assert ts.stopped and out == "사과 3개와 " and ts.text == out
    ts2 = TextStream(lm.tokenizer, stop=["없는 말"])
    assert "".join(ts2.push(t) for t in ids) + ts2.flush() == text and not ts2.stopped


def _expected(lm, ids, n):
    return lm.decode(make_engine(lm).generate([ids], GREEDY, n)[0].output)


def test_generate_command_streams_the_greedy_continuation(model_dir, lm, capsys):
    prompt = "오늘 날씨가"
    with pytest.raises(SystemExit) as e:
        main(["generate", str(model_dir), "--prompt", prompt, "--max-new-tokens", "20", "--temperature", "0"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out == prompt + _expected(lm, lm.encode(prompt), 20) + "\n"


def test_generate_command_batches_several_prompts(model_dir, lm, capsys):
    prompts = ["대한민국은", "Hello"]
    with pytest.raises(SystemExit):
        main(["generate", str(model_dir), "--prompt", prompts[0], "--prompt", prompts[1], "--max-new-tokens", "12",
              "--temperature", "0", "--chat"])
    out = capsys.readouterr().out
    for p in prompts:
        assert _expected(lm, lm.encode_chat([{"role": "user", "content": p}]), 12) in out


def test_generate_command_errors_are_clear(model_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["generate", str(tmp_path / "nope"), "--prompt", "x"])
    assert e.value.code == 1 and "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["generate", str(model_dir), "--prompt", "x", "--top-p", "0"])
    assert e.value.code == 1 and "top_p" in capsys.readouterr().err


def test_chat_loop_keeps_history_and_handles_commands(lm):
    from krllm.commands.chat import chat_loop

    inputs = iter(["안녕하세요", "이름이 뭐예요?", "/reset", "이름이 뭐예요?", "/bogus", "/exit"])
    out = []
    chat_loop(Generator(lm), GREEDY, 16, [], "너는 도우미야.", read=lambda _: next(inputs), write=out.append)
    text = "".join(out)
    sys_msg = [{"role": "system", "content": "너는 도우미야."}]
    first = _expected(lm, lm.encode_chat(sys_msg + [{"role": "user", "content": "안녕하세요"}]), 16)
    with_history = _expected(lm, lm.encode_chat(sys_msg + [
        {"role": "user", "content": "안녕하세요"}, {"role": "assistant", "content": first},
        {"role": "user", "content": "이름이 뭐예요?"}]), 16)
    fresh = _expected(lm, lm.encode_chat(sys_msg + [{"role": "user", "content": "이름이 뭐예요?"}]), 16)
    assert with_history != fresh  # history really changes the prompt
    assert f"bot> {first}\n" in text and f"bot> {with_history}\n" in text and f"bot> {fresh}\n" in text
    assert "(conversation cleared)" in text and "unknown command '/bogus'" in text


@pytest.mark.slow
def test_chat_command_in_a_real_process(model_dir, lm):
    """`krllm chat` as a user runs it: a separate process reading stdin."""
    proc = subprocess.run([sys.executable, "-m", "krllm", "chat", str(model_dir), "--temperature", "0",
                           "--max-new-tokens", "12"], input="반가워요\n/exit\n", capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    expected = _expected(lm, lm.encode_chat([{"role": "user", "content": "반가워요"}]), 12)
    assert f"bot> {expected}\n" in proc.stdout


def test_shipped_serve_config_parses_to_the_defaults():
    from pathlib import Path

    from krllm.config import load_config
    from krllm.infer.config import ServeConfig

    path = Path(__file__).resolve().parents[1] / "configs" / "serve" / "default.yaml"
    assert load_config(path, ServeConfig) == ServeConfig()
    cfg = load_config(path, ServeConfig, ["engine.max_batch=32", "limits.max_tokens=512"])
    assert cfg.engine.max_batch == 32 and cfg.limits.max_tokens == 512


def test_serve_config_rejects_bad_limits():
    from krllm.config import ConfigError, load_config
    from krllm.infer.config import ServeConfig

    with pytest.raises(ConfigError, match="default_max_tokens"):
        load_config(None, ServeConfig, ["limits.default_max_tokens=2000", "limits.max_tokens=100"])
    with pytest.raises(ConfigError, match="limits.max_tokns"):
        load_config(None, ServeConfig, ["limits.max_tokns=5"])


@pytest.mark.slow
def test_serve_command_in_a_real_process_shows_its_port_and_refuses_a_taken_one(model_dir):
    """`krllm serve --port 0` prints the port it really got; a taken port is an error before loading."""
    import socket

    from serve_process import serve_process

    with serve_process(model_dir) as (_, url):
        port = int(url.rsplit(":", 1)[1])
        assert port != 0
        taken = subprocess.run([sys.executable, "-m", "krllm", "serve", str(model_dir), "--port", str(port)],
                               capture_output=True, text=True, timeout=60)
        assert taken.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in taken.stderr
        assert "loading" not in taken.stderr  # failed before loading the model
    with socket.socket() as s:  # the port is free again after a clean shutdown
        s.bind(("127.0.0.1", port))
