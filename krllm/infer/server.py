"""OpenAI-compatible HTTP server (FastAPI + uvicorn) and the web chat page.

    POST /v1/chat/completions   chat with the model's chat template; `stream: true` -> SSE chunks
    POST /v1/completions        raw text (or token id) prompts; several prompts = several choices
    GET  /v1/models             the one served model
    GET  /health                {"status": "ok", running / waiting requests, slots}; never needs a key
    GET  /                      the chat page (krllm/infer/static)

Every request becomes one engine sequence; the scheduler's thread batches all of them
(continuous batching). A streaming client that disconnects cancels its sequence, freeing the
slot. Errors always have OpenAI's shape: {"error": {"message", "type", "param", "code"}}.

Web pages the user visits must not drive a key-less local server: the API takes only JSON bodies
(a cross-site `text/plain` POST needs no CORS preflight; `application/json` does), a server bound to
loopback answers only loopback `Host` names (DNS rebinding), CORS is off unless origins are named,
and the chat page forbids framing and foreign scripts.

    app = create_app(lm, Scheduler(engine), ServeConfig(), api_key=None, allowed_hosts=(), cors_origins=())
    with BackgroundServer(app, port=0) as url: ...      # tests / benchmarks
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import threading
import time
from importlib import resources
from pathlib import Path
from typing import AsyncIterator, Iterable

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from krllm.infer.config import ServeConfig
from krllm.infer.protocol import (
    ApiError,
    ChatCompletionRequest,
    CompletionRequest,
    chat_chunk,
    chat_completion,
    model_list,
    new_id,
    now,
    text_chunk,
    text_completion,
    usage,
)
from krllm.infer.sampling import SamplingParams
from krllm.infer.scheduler import Scheduler
from krllm.infer.textstream import TextStream

log = logging.getLogger("krllm.infer")
STATIC_DIR = Path(str(resources.files("krllm.infer") / "static"))
DISCONNECT_POLL_S = 0.25  # how often a non-streaming request checks whether its client is still there
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")  # Host names a loopback-bound server always answers
# The chat page loads only its own files and talks only to this server; nobody may frame it (clickjacking).
PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class Generation:
    """One choice: submit token ids to the scheduler, turn the tokens that come back into text."""

    def __init__(self, server: "ServerState", ids: list[int], sampling: SamplingParams, max_new: int,
                 stops: list[str], ignore_eos: bool):
        self.server, self.ids, self.sampling, self.max_new = server, ids, sampling, max_new
        self.stops, self.ignore_eos = stops, ignore_eos
        self.finish_reason: str | None = None
        self.n_out = 0
        self.text = ""

    async def deltas(self) -> AsyncIterator[str]:
        """Yield text pieces as they become final; sets finish_reason / n_out / text when done.

        Tokens that arrived while the previous piece was being sent go out together as one piece,
        so a server that falls behind (many streams, a slow client) sends fewer, larger chunks
        instead of queueing one chunk per token.
        """
        queue: asyncio.Queue = asyncio.Queue()

        def on_token(tok, finish, err):  # runs on the event loop (see ServerState.attach_loop)
            queue.put_nowait((tok, finish, err))

        self.server.attach_loop()
        sched = self.server.scheduler
        handle = sched.submit(self.ids, self.sampling, self.max_new, on_token, stop_ids=() if self.ignore_eos else None)
        ts = TextStream(self.server.lm.tokenizer, self.stops)
        try:
            while True:
                events = [await queue.get()]
                while not queue.empty():
                    events.append(queue.get_nowait())
                piece, done = self._consume(events, ts)
                if done and self.finish_reason == "stop" and ts.stopped:
                    sched.cancel(handle, "stop")
                if piece:
                    self.text += piece
                    yield piece
                if done:
                    return
        finally:
            if not handle.done:
                sched.cancel(handle)  # client gone or error: free the slot now

    def _consume(self, events, ts: TextStream) -> tuple[str, bool]:
        """Engine events (token, finish, error) -> (new final text, whether the choice is done)."""
        text = ""
        for tok, finish, err in events:
            if err:
                raise ApiError(500, err, type="server_error")
            if tok is not None:
                self.n_out += 1
                text += ts.push(tok)
                if ts.stopped:
                    self.finish_reason = "stop"
                    return text, True
            if finish:
                self.finish_reason = "length" if finish == "length" else "stop"
                return text + ts.flush(), True
        return text, False

    async def run(self) -> str:
        async for _ in self.deltas():
            pass
        return self.text


class ServerState:
    def __init__(self, lm, scheduler: Scheduler, cfg: ServeConfig, api_key: str | None):
        self.lm, self.scheduler, self.cfg, self.api_key = lm, scheduler, cfg, api_key
        self.model_id = cfg.model_name or lm.name
        self.created = now()
        self.max_seq_len = scheduler.engine.max_seq_len

    def attach_loop(self) -> None:
        """Deliver engine callbacks on this event loop, one wake-up per engine step."""
        if self.scheduler.dispatch is None:
            loop = asyncio.get_running_loop()

            def deliver(items):
                for callback, tok, finish, err in items:
                    callback(tok, finish, err)

            self.scheduler.dispatch = lambda items: loop.call_soon_threadsafe(deliver, items)

    # ------------------------------------------------------------------ checks
    def check_auth(self, request) -> None:
        if not self.api_key:
            return
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if not token or not hmac.compare_digest(token.encode(), self.api_key.encode()):
            raise ApiError(401, "Incorrect or missing API key: send 'Authorization: Bearer <key>'.",
                           type="invalid_request_error", code="invalid_api_key")

    async def read_json(self, request) -> dict:
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/json":  # a web page can send text/plain cross-site without a CORS preflight
            raise ApiError(415, f"Content-Type must be application/json (got {media or 'none'})",
                           code="unsupported_media_type")
        limit = self.cfg.limits.max_request_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"request body of {declared} bytes exceeds the limit of {limit} bytes",
                           code="request_too_large")
        body = bytearray()
        try:
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise ApiError(413, f"request body exceeds the limit of {limit} bytes", code="request_too_large")
        except ClientDisconnect:  # the client's business, not a server bug: one line, no traceback
            client = f"{request.client.host}:{request.client.port}" if request.client else "a client"
            log.warning("%s disconnected while sending its request body (%d bytes read) to %s",
                        client, len(body), request.url.path)
            raise ApiError(499, "client disconnected", code="client_closed_request") from None
        try:
            data = json.loads(body or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ApiError(400, f"request body is not valid JSON: {e}", code="invalid_json") from None
        if not isinstance(data, dict):
            raise ApiError(400, "request body must be a JSON object", code="invalid_json")
        return data

    def parse(self, schema, data: dict):
        try:
            req = schema.model_validate(data)
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(x) for x in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = f"Unrecognized request argument supplied: {loc}"
            elif err["type"] == "missing":
                msg = f"Missing required parameter: '{loc}'."
            elif loc:
                msg = f"{loc}: {msg}"
            raise ApiError(400, msg, param=loc or None, code="invalid_value") from None
        if req.model is not None and req.model != self.model_id:
            raise ApiError(404, f"The model '{req.model}' does not exist; this server serves '{self.model_id}'.",
                           param="model", code="model_not_found")
        return req

    def max_new_tokens(self, req, n_prompt: int) -> int:
        lim = self.cfg.limits
        asked = req.requested_tokens
        if asked is not None and asked > lim.max_tokens:
            raise ApiError(400, f"max_tokens={asked} exceeds this server's limit of {lim.max_tokens}",
                           param="max_tokens", code="invalid_value")
        room = self.max_seq_len - n_prompt
        return max(1, min(asked or lim.default_max_tokens, room))

    def check_prompt(self, n_prompt: int, param: str) -> None:
        limit = min(self.cfg.limits.max_prompt_tokens, self.max_seq_len - 1)
        if n_prompt > limit:
            raise ApiError(400, f"the prompt has {n_prompt} tokens; this server accepts at most {limit}",
                           param=param, code="context_length_exceeded")
        if n_prompt == 0:
            raise ApiError(400, "the prompt is empty", param=param, code="invalid_value")

    def check_capacity(self, n: int = 1, param: str | None = None) -> None:
        limit = self.cfg.limits.max_concurrent
        if n > limit:  # never fits, however long the client waits: a retry would fail the same way
            raise ApiError(400, f"{n} prompts in one request; this server runs at most {limit} at once "
                                "(limits.max_concurrent): send fewer per request", param=param, code="invalid_value")
        if self.scheduler.pending + n > limit:
            raise ApiError(429, f"server is busy: {self.scheduler.pending} requests in progress "
                                f"(limit {limit}); retry shortly", type="rate_limit_error",
                           code="too_many_requests")

    def sampling(self, req) -> SamplingParams:
        try:
            return SamplingParams(temperature=req.temperature, top_k=req.top_k, top_p=req.top_p, min_p=req.min_p,
                                  repetition_penalty=req.repetition_penalty, seed=req.seed)
        except ValueError as e:  # the schema should catch these first; a value it let through is still the client's
            raise ApiError(400, str(e), code="invalid_value") from None


def _sse(obj) -> bytes:
    """One server-sent event; orjson because every streamed token passes through here."""
    return b"data: " + orjson.dumps(obj) + b"\n\n"


async def _until_done_or_disconnected(request, coro):
    """Await `coro`, cancelling it if the HTTP client goes away (frees the engine slot)."""
    task = asyncio.ensure_future(coro)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                raise ApiError(499, "client disconnected", code="client_closed_request")
    finally:
        if not task.done():
            task.cancel()


def _host_name(host_header: str) -> str:
    """'Localhost:8000' -> 'localhost', '[::1]:8000' -> '[::1]' (the port does not matter)."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_host_names(bind_host: str, extra: Iterable[str]) -> frozenset[str] | None:
    """Host names the server answers: None = any (bound beyond loopback and no list given, or '*' listed)."""
    names = {_host_name(h) for h in extra if h.strip()}
    if "*" in names or (not names and not is_loopback(bind_host)):
        return None
    return frozenset(names | set(LOOPBACK_HOSTS))


class HostCheck:
    """ASGI middleware: answer only requests whose Host is in `hosts` (a DNS-rebinding page sends its own
    name, now resolving to 127.0.0.1). Plain ASGI, so streaming and disconnect detection pass untouched."""

    def __init__(self, app, hosts: frozenset[str]):
        self.app, self.hosts = app, hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            raw = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            name = _host_name(raw)
            if name not in self.hosts:
                log.warning("refused a request for Host %r (allowed: %s; see --allowed-host)",
                            name[:100], ", ".join(sorted(self.hosts)))
                err = ApiError(400, f"Host '{name[:100]}' is not allowed on this server (start it with "
                                    "--allowed-host NAME to allow it)", code="invalid_host")
                await JSONResponse(err.body(), status_code=400)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(lm, scheduler: Scheduler, cfg: ServeConfig | None = None, api_key: str | None = None,
               allowed_hosts: Iterable[str] = (), cors_origins: Iterable[str] = ()):
    """The FastAPI app serving `lm` through `scheduler` (which the caller owns and closes).

    allowed_hosts: Host names answered besides the loopback ones ('*' = any); a server bound beyond
    loopback answers any Host unless this is given. cors_origins: origins whose pages may call the API
    from a browser (none by default; '*' = any).
    """
    cfg = cfg or ServeConfig()
    state = ServerState(lm, scheduler, cfg, api_key)
    app = FastAPI(title="krllm", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.krllm = state
    origins = [o.strip().rstrip("/") for o in cors_origins if o.strip()]
    if origins:
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"], max_age=600)
    hosts = allowed_host_names(cfg.host, allowed_hosts)
    if hosts is not None:  # added last = outermost: runs before CORS and every route
        app.add_middleware(HostCheck, hosts=hosts)

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):
        return JSONResponse(ApiError(exc.status_code, str(exc.detail)).body(), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _internal_error(request, exc: Exception):  # a bug: answer in OpenAI's shape, log the traceback
        log.exception("unhandled error on %s", request.url.path)
        return JSONResponse(ApiError(500, f"internal server error: {type(exc).__name__}: {exc}",
                                     type="server_error").body(), status_code=500)

    @app.api_route("/health", methods=["GET", "HEAD"])
    async def health():
        return {"status": "ok", "model": state.model_id, **scheduler.stats()}

    @app.get("/v1/models")
    async def models(request: Request):
        state.check_auth(request)
        return model_list(state.model_id, state.created)

    @app.get("/v1/models/{model_id:path}")
    async def model_info(model_id: str, request: Request):
        state.check_auth(request)
        if model_id != state.model_id:
            raise ApiError(404, f"The model '{model_id}' does not exist", param="model", code="model_not_found")
        return model_list(state.model_id, state.created)["data"][0]

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        state.check_auth(request)
        req: ChatCompletionRequest = state.parse(ChatCompletionRequest, await state.read_json(request))
        try:
            ids = lm.encode_chat(req.chat_messages())
        except Exception as e:  # template errors (e.g. roles it does not accept) are the client's to fix
            raise ApiError(400, f"cannot apply the chat template: {e}", param="messages") from None
        state.check_prompt(len(ids), "messages")
        gen = Generation(state, ids, state.sampling(req), state.max_new_tokens(req, len(ids)), req.stop, req.ignore_eos)
        state.check_capacity()
        cid = new_id("chatcmpl")
        if not req.stream:
            text = await _until_done_or_disconnected(request, gen.run())
            return chat_completion(cid, state.model_id, text, gen.finish_reason, len(ids), gen.n_out)

        async def sse():
            created = now()
            yield _sse(chat_chunk(cid, state.model_id, created, {"role": "assistant", "content": ""}))
            try:
                async for piece in gen.deltas():
                    yield _sse(chat_chunk(cid, state.model_id, created, {"content": piece}))
            except ApiError as e:
                yield _sse(e.body())
                return
            yield _sse(chat_chunk(cid, state.model_id, created, {}, gen.finish_reason))
            if req.include_usage:
                yield _sse(chat_chunk(cid, state.model_id, created, {}, usage_=usage(len(ids), gen.n_out),
                                      choices=False))
            yield b"data: [DONE]\n\n"

        return StreamingResponse(sse(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/completions")
    async def completions(request: Request):
        state.check_auth(request)
        req: CompletionRequest = state.parse(CompletionRequest, await state.read_json(request))
        prompts = req.prompts()
        encoded = []
        for p in prompts:
            ids = list(p) if isinstance(p, list) else lm.encode(p)
            if isinstance(p, list) and any(not 0 <= t < lm.model.config.vocab_size for t in ids):
                raise ApiError(400, "prompt token ids must be within the vocabulary", param="prompt")
            state.check_prompt(len(ids), "prompt")
            encoded.append(ids)
        sampling = state.sampling(req)
        gens = [Generation(state, ids, sampling, state.max_new_tokens(req, len(ids)), req.stop, req.ignore_eos)
                for ids in encoded]
        state.check_capacity(len(gens), "prompt")
        echoes = [(p if isinstance(p, str) else lm.decode(p)) if req.echo else "" for p in prompts]
        cid = new_id("cmpl")
        n_prompt = sum(len(i) for i in encoded)
        if not req.stream:
            async def run_all():
                tasks = [asyncio.ensure_future(g.run()) for g in gens]
                try:
                    return await asyncio.gather(*tasks)
                finally:  # one choice failed or the client left: stop the others too
                    for t in tasks:
                        t.cancel()
            texts = await _until_done_or_disconnected(request, run_all())
            return text_completion(cid, state.model_id, [e + t for e, t in zip(echoes, texts)],
                                   [g.finish_reason for g in gens], n_prompt, sum(g.n_out for g in gens))

        async def sse():
            created = now()
            queue: asyncio.Queue = asyncio.Queue()

            async def pump(i, g):
                try:
                    if echoes[i]:
                        await queue.put((i, echoes[i], None))
                    async for piece in g.deltas():
                        await queue.put((i, piece, None))
                    await queue.put((i, "", g.finish_reason or "stop"))
                except ApiError as e:
                    await queue.put((i, None, e))

            tasks = [asyncio.ensure_future(pump(i, g)) for i, g in enumerate(gens)]
            try:
                remaining = len(gens)
                while remaining:
                    i, piece, finish = await queue.get()
                    if isinstance(finish, ApiError):
                        yield _sse(finish.body())
                        return
                    yield _sse(text_chunk(cid, state.model_id, created, i, piece, finish))
                    remaining -= finish is not None
                if req.include_usage:
                    yield _sse(text_chunk(cid, state.model_id, created, 0, "", choices=False,
                                          usage_=usage(n_prompt, sum(g.n_out for g in gens))))
                yield b"data: [DONE]\n\n"
            finally:
                for t in tasks:
                    t.cancel()

        return StreamingResponse(sse(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def index():
        return FileResponse(STATIC_DIR / "index.html", headers=PAGE_HEADERS)

    if STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


class BackgroundServer:
    """Run uvicorn in a thread on 127.0.0.1 (port 0 = any free port); `with` yields the base URL."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                                    lifespan="off", timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, name="krllm-http", daemon=True)
        self.url = ""

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.time() > deadline:
                raise RuntimeError("the HTTP server did not start")
            time.sleep(0.02)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        with contextlib.suppress(Exception):
            self.thread.join(10)
