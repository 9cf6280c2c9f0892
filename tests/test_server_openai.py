"""The server on 127.0.0.1 with a tiny model, called with the official `openai` client and httpx:
OpenAI shapes, streaming, stop strings, concurrency (continuous batching), limits, auth, disconnects."""

import json
import logging
import re
import socket
import threading
import time

import httpx
import pytest

from krllm.infer.config import ServeConfig
from krllm.infer.startup import make_engine
from krllm.model.load import load
from krllm.infer.sampling import SamplingParams
from krllm.infer.scheduler import Scheduler
from krllm.infer.server import BackgroundServer, create_app
from krllm.infer.testing import tiny_model_dir

openai = pytest.importorskip("openai")

MODEL = "tiny"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("server") / MODEL)


@pytest.fixture(scope="module")
def reference(model_dir):
    """A separate engine (batch 1) that computes what the server must answer."""
    lm = load(model_dir, device="cpu")
    engine = make_engine(lm, max_batch=1)

    def chat(messages, max_tokens, **kw):
        ids = lm.encode_chat(messages)
        seq = engine.generate([ids], SamplingParams(temperature=0, **kw), max_tokens)[0]
        return lm.decode(seq.output), seq.finish_reason, len(ids), len(seq.output)

    def complete(prompt, max_tokens):
        ids = lm.encode(prompt)
        seq = engine.generate([ids], SamplingParams(temperature=0), max_tokens)[0]
        return lm.decode(seq.output), seq.finish_reason

    return type("Ref", (), {"chat": staticmethod(chat), "complete": staticmethod(complete), "lm": lm})


def _serve(model_dir, api_key=None, **cfg):
    lm = load(model_dir, device="cpu")
    sched = Scheduler(make_engine(lm, max_batch=cfg.pop("max_batch", 8)))
    conf = ServeConfig(**cfg)
    return sched, BackgroundServer(create_app(lm, sched, conf, api_key=api_key))


@pytest.fixture(scope="module")
def server(model_dir):
    sched, bg = _serve(model_dir, limits={"max_tokens": 300, "max_prompt_tokens": 200, "max_request_bytes": 4096})
    with bg as url:
        yield url, sched
    sched.close()


@pytest.fixture()
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_models_and_health(server, client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    health = httpx.get(server[0] + "/health").json()
    assert health["status"] == "ok" and health["model"] == MODEL and health["slots"] == 8


def test_chat_completion_matches_engine(client, reference):
    messages = [{"role": "system", "content": "너는 친절한 도우미야."}, {"role": "user", "content": "오늘 날씨가 어때?"}]
    text, finish, n_prompt, n_out = reference.chat(messages, 24)
    r = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=24, temperature=0)
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion" and r.model == MODEL
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == text and text
    assert r.choices[0].finish_reason == finish
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (n_prompt, n_out,
                                                                                        n_prompt + n_out)


def test_chat_streaming_chunks_add_up(client, server, reference, monkeypatch):
    step = server[1].engine.step  # a real model's pace (the tiny one decodes in microseconds), so
    monkeypatch.setattr(server[1].engine, "step", lambda: (time.sleep(0.005), step())[1])  # tokens come one by one
    messages = [{"role": "user", "content": "안녕하세요! 자기소개 해 주세요."}]
    text, finish, n_prompt, n_out = reference.chat(messages, 30)
    stream = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=30, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].id.startswith("chatcmpl-") and chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([p for p in pieces if p]) > 3  # really streamed in pieces
    assert "".join(pieces) == text
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [finish]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == n_out


def test_tokens_that_arrive_together_go_out_as_one_chunk(model_dir, reference):
    """A server that falls behind sends fewer, larger deltas: same text, same usage, fewer chunks."""
    sched, bg = _serve(model_dir)
    step = sched.engine.step

    def four_steps():  # the engine hands over four tokens per request at once, as a lagging loop sees them
        events = []
        for _ in range(4):
            events += step()
        return events

    sched.engine.step = four_steps
    messages = [{"role": "user", "content": "천천히 말해 줘"}]
    want, _, _, n_tokens = reference.chat(messages, 40)
    assert n_tokens >= 12  # long enough for the chunk count to mean something
    with bg as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=40, temperature=0,
                                                     stream=True, stream_options={"include_usage": True}))
    sched.close()
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == want
    assert chunks[-1].usage.completion_tokens == n_tokens
    assert len(pieces) <= (n_tokens + 3) // 4 + 1 < n_tokens


def test_completions_plain_streaming_and_several_prompts(client, reference):
    prompts = ["대한민국은 민주공화국이다.", "The quick brown"]
    refs = [reference.complete(p, 20) for p in prompts]
    r = client.completions.create(model=MODEL, prompt=prompts[0], max_tokens=20, temperature=0)
    assert r.id.startswith("cmpl-") and r.object == "text_completion"
    assert (r.choices[0].text, r.choices[0].finish_reason) == refs[0]
    multi = client.completions.create(model=MODEL, prompt=prompts, max_tokens=20, temperature=0)
    assert [(c.index, c.text, c.finish_reason) for c in multi.choices] == [(i, *refs[i]) for i in range(2)]
    got = {0: "", 1: ""}
    for chunk in client.completions.create(model=MODEL, prompt=prompts, max_tokens=20, temperature=0, stream=True):
        for c in chunk.choices:
            got[c.index] += c.text
    assert [got[0], got[1]] == [refs[0][0], refs[1][0]]
    echo = client.completions.create(model=MODEL, prompt=prompts[1], max_tokens=5, temperature=0, echo=True)
    assert echo.choices[0].text.startswith(prompts[1])


def test_stop_string_cuts_the_text(client, reference):
    messages = [{"role": "user", "content": "이야기를 들려줘"}]
    text, *_ = reference.chat(messages, 40)
    stop = text[len(text) // 2: len(text) // 2 + 2]
    assert stop.strip()
    r = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=40, temperature=0, stop=[stop])
    assert r.choices[0].message.content == text[: text.index(stop)]
    assert r.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=40, temperature=0, stop=stop, stream=True) if c.choices)
    assert streamed == text[: text.index(stop)]


def test_sixteen_concurrent_requests_are_batched_and_correct(server, reference):
    url, sched = server
    jobs = [([{"role": "user", "content": f"질문 {i}: 사과가 {i}개 있어요."}], 8 + (i * 7) % 25, i % 2 == 0)
            for i in range(16)]
    expected = [reference.chat(m, n)[0] for m, n, _ in jobs]
    results, errors = [None] * 16, []
    before = sched.stats()["peak_running"]

    def worker(i):
        c = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=120)
        m, n, stream = jobs[i]
        try:
            if stream:
                results[i] = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
                    model=MODEL, messages=m, max_tokens=n, temperature=0, stream=True) if ch.choices)
            else:
                results[i] = c.chat.completions.create(model=MODEL, messages=m, max_tokens=n,
                                                       temperature=0).choices[0].message.content
        except Exception as e:  # collected and asserted below
            errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert results == expected
    assert sched.stats()["peak_running"] >= max(before, 4)  # requests were decoded together


def test_seeded_sampling_is_reproducible(client):
    kw = dict(model=MODEL, messages=[{"role": "user", "content": "아무 말이나 해 줘"}], max_tokens=20,
              temperature=1.0, top_p=0.9, seed=42)
    a = client.chat.completions.create(**kw).choices[0].message.content
    b = client.chat.completions.create(**kw).choices[0].message.content
    c = client.chat.completions.create(**{**kw, "seed": 43}).choices[0].message.content
    assert a == b and a != c


def _error(r, status):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


def test_bad_requests_get_openai_errors(server):
    url = server[0]
    post = lambda path, **kw: httpx.post(url + path, timeout=30, **kw)  # noqa: E731
    msgs = [{"role": "user", "content": "hi"}]
    bad = post("/v1/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"})
    assert "JSON" in _error(bad, 400)["message"]
    err = _error(post("/v1/chat/completions", json={"model": MODEL}), 400)
    assert err["param"] == "messages"
    err = _error(post("/v1/chat/completions", json={"messages": msgs, "temprature": 0.5}), 400)
    assert "temprature" in err["message"]
    err = _error(post("/v1/chat/completions", json={"messages": msgs, "temperature": 5}), 400)
    assert err["param"] == "temperature"
    err = _error(post("/v1/chat/completions", json={"messages": [{"role": "wizard", "content": "x"}]}), 400)
    assert err["param"].startswith("messages.0")
    err = _error(post("/v1/chat/completions", json={"messages": msgs, "max_tokens": 301}), 400)
    assert err["param"] == "max_tokens" and "300" in err["message"]
    err = _error(post("/v1/chat/completions", json={"messages": msgs, "n": 2}), 400)
    assert "n > 1" in err["message"]
    err = _error(post("/v1/completions", json={"prompt": "가나다라 " * 120}), 400)
    assert err["code"] == "context_length_exceeded"
    err = _error(post("/v1/chat/completions", json={"model": "gpt-4", "messages": msgs}), 404)
    assert err["code"] == "model_not_found"
    err = _error(post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x" * 5000}]}), 413)
    assert err["code"] == "request_too_large"
    _error(httpx.get(url + "/v1/nothing-here"), 404)
    _error(post("/v1/completions", json={"prompt": [1, 2, 10**6]}), 400)


def test_streaming_client_disconnect_frees_its_slot(server):
    url, sched = server
    body = {"model": MODEL, "messages": [{"role": "user", "content": "길게 말해 줘"}], "max_tokens": 300,
            "temperature": 0, "ignore_eos": True, "stream": True}
    before = sched.stats()["tokens_generated"]
    step = sched.engine.step
    sched.engine.step = lambda: (time.sleep(0.005), step())[1]  # >= 5 ms a token: 300 tokens take > 1.5 s
    with httpx.Client(timeout=30) as c:
        with c.stream("POST", url + "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            got = [next(lines) for _ in range(6)]
            assert any(line.startswith("data: ") for line in got)
            assert sched.stats()["running"] == 1
    deadline = time.time() + 10
    while sched.stats()["running"] or sched.stats()["waiting"]:
        assert time.time() < deadline, "the slot was not freed after the client left"
        time.sleep(0.05)
    sched.engine.step = step
    assert sched.stats()["tokens_generated"] - before < 250  # stopped well before max_tokens


def test_over_capacity_gets_429(model_dir):
    sched, bg = _serve(model_dir, limits={"max_concurrent": 1})
    # Hold the engine so the first request is certainly still in progress when the second arrives.
    release, step = threading.Event(), sched.engine.step
    sched.engine.step = lambda *a, **k: (release.wait(30), step(*a, **k))[1]
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 20, "ignore_eos": True, "stream": True}
    with bg as url, httpx.Client(timeout=30) as c:
        with c.stream("POST", url + "/v1/chat/completions", json=body) as first:
            lines = first.iter_lines()
            next(lines)
            err = _error(c.post(url + "/v1/chat/completions", json=body), 429)
            assert err["type"] == "rate_limit_error" and "limit 1" in err["message"]
            release.set()
            assert sum(1 for line in lines if line.startswith("data: {")) >= 2
        assert c.post(url + "/v1/chat/completions", json={**body, "stream": False}).status_code == 200
    sched.close()


def test_api_key_required_when_set(model_dir):
    sched, bg = _serve(model_dir, api_key="s3cret")
    with bg as url:
        err = _error(httpx.get(url + "/v1/models"), 401)
        assert err["code"] == "invalid_api_key"
        _error(httpx.get(url + "/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
        _error(httpx.post(url + "/v1/chat/completions", json={"messages": []}), 401)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
        ok = openai.OpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0)
        assert ok.models.list().data[0].id == MODEL
        assert httpx.get(url + "/health").status_code == 200
        page = httpx.get(url + "/")
        assert page.status_code == 200 and "krllm" in page.text
    sched.close()


def test_chat_page_and_static_files_are_served(server):
    url = server[0]
    page = httpx.get(url + "/")
    assert page.status_code == 200 and 'id="message"' in page.text
    js = httpx.get(url + "/static/app.js")
    assert js.status_code == 200 and "/v1/chat/completions" in js.text
    assert json.loads(httpx.get(url + "/health").text)["status"] == "ok"


def test_non_streaming_client_that_gives_up_frees_its_slot(model_dir):
    sched, bg = _serve(model_dir)
    step = sched.engine.step
    sched.engine.step = lambda: (time.sleep(0.005), step())[1]  # >= 5 ms a token: 300 tokens take > 1.5 s
    body = {"model": MODEL, "messages": [{"role": "user", "content": "길게"}], "max_tokens": 300,
            "temperature": 0, "ignore_eos": True}
    with bg as url:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url + "/v1/chat/completions", json=body, timeout=httpx.Timeout(30, read=0.3))
        deadline = time.time() + 10
        while sched.stats()["running"] or sched.stats()["waiting"]:
            assert time.time() < deadline, "the slot was not freed after the client gave up"
            time.sleep(0.05)
        assert sched.stats()["tokens_generated"] < 250
    sched.close()


def test_token_id_prompt(client, reference):
    ids = reference.lm.encode("모험가여")
    r = client.completions.create(model=MODEL, prompt=ids, max_tokens=10, temperature=0)
    assert r.choices[0].text == reference.complete("모험가여", 10)[0]
    assert r.usage.prompt_tokens == len(ids)


@pytest.mark.parametrize("param,raw", [
    ("repetition_penalty", "Infinity"), ("repetition_penalty", "NaN"), ("temperature", "NaN"),
    ("top_p", "NaN"), ("min_p", "-Infinity"), ("presence_penalty", "NaN"), ("top_k", "1e400"),
    ("seed", "18446744073709551616"), ("seed", "-9223372036854775809"), ("top_k", str(2**70)),
    ("max_tokens", str(2**70)),
])
def test_non_finite_or_out_of_range_numbers_are_400_naming_the_parameter(server, param, raw):
    """Python's JSON reader accepts NaN / Infinity and unbounded ints: each must be a 400, never a 500."""
    for path, rest in (("/v1/chat/completions", '"messages": [{"role": "user", "content": "hi"}]'),
                       ("/v1/completions", '"prompt": "hi"')):
        body = f'{{{rest}, "max_tokens": 2, "{param}": {raw}}}' if param != "max_tokens" else \
            f'{{{rest}, "{param}": {raw}}}'
        r = httpx.post(server[0] + path, content=body.encode(), headers={"Content-Type": "application/json"},
                       timeout=30)
        err = _error(r, 400)
        assert err["type"] == "invalid_request_error" and err["param"] == param, err


def test_seed_at_the_int64_edges_is_accepted(client):
    for seed in (-(2**63), 2**63 - 1):
        r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                           seed=seed)
        assert r.choices[0].finish_reason in ("stop", "length")


def test_more_prompts_than_the_server_ever_runs_is_400_not_429(model_dir):
    """A retry of a request bigger than max_concurrent can never succeed: 400, not 429 'retry shortly'."""
    sched, bg = _serve(model_dir, limits={"max_concurrent": 2})
    with bg as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        with pytest.raises(openai.BadRequestError) as e:
            c.completions.create(model=MODEL, prompt=["가", "나", "다"], max_tokens=2)
        err = e.value.body
        assert e.value.status_code == 400 and err["param"] == "prompt" and "2" in err["message"], err
        assert len(c.completions.create(model=MODEL, prompt=["가", "나"], max_tokens=2).choices) == 2
    sched.close()


def test_head_requests_on_the_page_and_health(server):
    for path in ("/", "/health"):
        r = httpx.head(server[0] + path)
        assert r.status_code == 200 and r.content == b"", path


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


def test_client_that_leaves_while_sending_its_body_is_one_log_line(model_dir):
    """Each such client costs one short line in the log, not two tracebacks."""
    sched, bg = _serve(model_dir)
    handler = _Records()
    loggers = [logging.getLogger(n) for n in ("uvicorn.error", "krllm.infer")]
    with bg as url:
        for lg in loggers:  # after uvicorn configured its loggers (they do not propagate to the root)
            lg.addHandler(handler)
        try:
            host, port = url.removeprefix("http://").rsplit(":", 1)
            for _ in range(3):
                with socket.create_connection((host, int(port))) as s:
                    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                              b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"messages\": [")
                    time.sleep(0.2)  # the app is reading the body when the client goes
            deadline = time.time() + 10
            while len([r for r in handler.records if "disconnect" in r.getMessage()]) < 3:
                assert time.time() < deadline, [r.getMessage() for r in handler.records]
                time.sleep(0.05)
            time.sleep(0.3)  # anything logged after the line would show up now
            assert httpx.get(url + "/health").status_code == 200
        finally:
            for lg in loggers:
                lg.removeHandler(handler)
    sched.close()
    assert [r for r in handler.records if r.exc_info] == []
    lines = [r.getMessage() for r in handler.records]
    assert len(lines) == 3 and all("\n" not in m and "/v1/chat/completions" in m for m in lines), lines


def test_api_takes_only_json_bodies(server, client):
    """A page on another site can POST text/plain without a CORS preflight; it must not reach the model."""
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).encode()
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
        headers = {"Content-Type": ctype} if ctype else {}
        for path in ("/v1/chat/completions", "/v1/completions"):
            err = _error(httpx.post(server[0] + path, content=body, headers=headers, timeout=30), 415)
            assert err["code"] == "unsupported_media_type", (ctype, err)
    ok = httpx.post(server[0] + "/v1/chat/completions", content=body, timeout=30,
                    headers={"Content-Type": "Application/JSON; charset=utf-8"})
    assert ok.status_code == 200, ok.text
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert r.choices[0].message.role == "assistant"  # the openai client sends application/json


@pytest.mark.parametrize("host,status", [
    ("evil.example", 400), ("evil.example:8000", 400), ("127.0.0.1.nip.io", 400), ("", 400),
    ("localhost", 200), ("LOCALHOST:8000", 200), ("127.0.0.1:1", 200), ("[::1]:8000", 200),
])
def test_loopback_server_answers_only_loopback_host_names(server, host, status):
    """A DNS-rebinding page reaches 127.0.0.1 under its own name: its Host header gives it away."""
    for path in ("/v1/models", "/", "/health"):
        r = httpx.get(server[0] + path, headers={"Host": host})
        assert r.status_code == status, (host, path, r.text)
    if status == 400:
        err = _error(httpx.post(server[0] + "/v1/chat/completions", headers={"Host": host},
                                json={"messages": [{"role": "user", "content": "hi"}]}), 400)
        assert err["code"] == "invalid_host" and "--allowed-host" in err["message"]


def test_allowed_hosts_and_a_server_bound_beyond_loopback(model_dir):
    from krllm.infer.server import allowed_host_names

    assert allowed_host_names("127.0.0.1", ["MyHost.lan:80"]) == {"myhost.lan", "localhost", "127.0.0.1", "[::1]"}
    assert allowed_host_names("::1", []) == {"localhost", "127.0.0.1", "[::1]"}
    assert allowed_host_names("0.0.0.0", []) is None  # exposed on purpose: any name (use --api-key)
    assert allowed_host_names("127.0.0.1", ["*"]) is None
    assert allowed_host_names("0.0.0.0", ["api.example"]) == {"api.example", "localhost", "127.0.0.1", "[::1]"}
    lm = load(model_dir, device="cpu")
    sched = Scheduler(make_engine(lm, max_batch=2))
    with BackgroundServer(create_app(lm, sched, ServeConfig(), allowed_hosts=["myhost.lan"])) as url:
        assert httpx.get(url + "/v1/models", headers={"Host": "myhost.lan:8000"}).status_code == 200
        assert httpx.get(url + "/v1/models", headers={"Host": "other.lan"}).status_code == 400
    with BackgroundServer(create_app(lm, sched, ServeConfig(host="0.0.0.0"), api_key="k")) as url:
        r = httpx.get(url + "/v1/models", headers={"Host": "any.name", "Authorization": "Bearer k"})
        assert r.status_code == 200
    sched.close()


def test_cors_is_off_by_default_and_on_for_named_origins(server, model_dir):
    preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type"}
    r = httpx.options(server[0] + "/v1/chat/completions", headers=preflight)
    assert r.status_code >= 400 and "access-control-allow-origin" not in r.headers
    r = httpx.get(server[0] + "/v1/models", headers={"Origin": "https://evil.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers  # the browser hides it

    lm = load(model_dir, device="cpu")
    sched = Scheduler(make_engine(lm, max_batch=2))
    with BackgroundServer(create_app(lm, sched, ServeConfig(), cors_origins=["http://localhost:3000/"])) as url:
        ok = httpx.options(url + "/v1/chat/completions", headers={**preflight, "Origin": "http://localhost:3000"})
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "http://localhost:3000"
        assert "POST" in ok.headers["access-control-allow-methods"]
        r = httpx.get(url + "/v1/models", headers={"Origin": "http://localhost:3000"})
        assert r.headers["access-control-allow-origin"] == "http://localhost:3000"
        bad = httpx.options(url + "/v1/chat/completions", headers=preflight)
        assert bad.status_code == 400 and "access-control-allow-origin" not in bad.headers
    sched.close()


def test_chat_page_forbids_framing_and_foreign_scripts(server):
    page = httpx.get(server[0] + "/")
    csp = page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert page.headers["x-frame-options"] == "DENY"
    assert "<script>" not in page.text and not re.search(r"\son[a-z]+=", page.text)  # nothing inline
    js = httpx.get(server[0] + "/static/app.js").text
    assert '"Content-Type": "application/json"' in js  # the page's own requests pass the JSON-only rule


@pytest.mark.slow
def test_serve_command_passes_allowed_host_and_cors_origin(model_dir):
    """`krllm serve --allowed-host NAME --cors-origin ORIGIN` in a real process: both reach the app."""
    from serve_process import serve_process

    with serve_process(model_dir, "--allowed-host", "myhost.lan", "--cors-origin", "http://localhost:3000") as (_, url):
        r = httpx.get(url + "/v1/models", headers={"Host": "myhost.lan", "Origin": "http://localhost:3000"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://localhost:3000"
        assert httpx.get(url + "/v1/models", headers={"Host": "evil.example"}).status_code == 400
