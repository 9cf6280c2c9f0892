"""Soak: `krllm serve` under many clients with abuse mixed in; every answer must be the expected one.

50 clients x 20 requests (default) against one server process on 127.0.0.1 (a random `tiny` model,
see serve_load.py). Each request is, by a seeded draw:

- a streaming chat (most of them), read to [DONE]: expects 200 and a usage chunk;
- a non-streaming chat or completion: expects 200 and choices;
- a stream the client drops after its first chunk: expects 200 before the drop;
- a body sent only in part before the client hangs up (never answered);
- malformed: broken JSON, text/plain, NaN / huge numbers, unknown roles, max_tokens beyond the limit,
  a body over the size limit, an unknown model route: expects a 4xx with an OpenAI error body.

Unexpected = any 5xx, a dropped connection, a 4xx for a good request or a 2xx for a bad one, or a
`Traceback` in the server's log. Reports them (target 0), latency p50/p99 of the good requests,
and the server's RSS after warm-up, after the soak and at peak; then checks the server still answers.

    python benchmarks/serve_soak.py
    python benchmarks/serve_soak.py --clients 20 --requests-per-client 10 --max-tokens 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import ServerProcess, bench_model, percentile  # noqa: E402

CHAT = "/v1/chat/completions"
# (name, path, raw body, content type): every one must be refused with a 4xx
MALFORMED = [
    ("broken json", CHAT, b'{"messages": [', "application/json"),
    ("text/plain body", CHAT, b'{"messages": [{"role": "user", "content": "hi"}]}', "text/plain"),
    ("nan temperature", CHAT, b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
     "application/json"),
    ("infinite penalty", CHAT, b'{"messages": [{"role": "user", "content": "hi"}], "repetition_penalty": Infinity}',
     "application/json"),
    ("seed beyond int64", CHAT, b'{"messages": [{"role": "user", "content": "hi"}], "seed": 18446744073709551616}',
     "application/json"),
    ("unknown role", CHAT, b'{"messages": [{"role": "wizard", "content": "hi"}]}', "application/json"),
    ("no messages", CHAT, b'{"model": "x"}', "application/json"),
    ("max_tokens too large", CHAT, b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000000}',
     "application/json"),
    ("body over the limit", CHAT, b'{"messages": [{"role": "user", "content": "' + b"a" * (2 << 20) + b'"}]}',
     "application/json"),
    ("prompt is a list of lists", "/v1/completions", b'{"prompt": [[1, [2]]]}', "application/json"),
    ("unknown route", "/v1/nothing", b"{}", "application/json"),
]
KINDS = ["stream"] * 10 + ["chat", "completion", "drop", "half_body"] + ["malformed"] * 3


def _body(kind: str, i: int, max_tokens: int) -> dict:
    msg = [{"role": "user", "content": f"내구 시험 {i}: 오늘 날씨 어때?"}]
    if kind == "completion":
        return {"model": "bench", "prompt": f"내구 시험 {i}", "max_tokens": max_tokens, "seed": i}
    return {"model": "bench", "messages": msg, "max_tokens": max_tokens, "temperature": 0.8, "seed": i, "ignore_eos": True,
            "stream": kind in ("stream", "drop"), "stream_options": {"include_usage": True}}


async def _half_body(url: str) -> None:
    """Declare a 4 kB body, send 100 bytes, hang up (the server must log one line, not a traceback)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"POST {CHAT} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: 4096\r\n\r\n".encode() + b'{"messages": [' + b" " * 86)
    await writer.drain()
    writer.close()


async def _one(client, url: str, kind: str, i: int, max_tokens: int, rng: random.Random) -> dict:
    """-> {"kind", "ok": expected outcome?, "why" (if not), "latency" (good requests)}."""
    t0 = time.perf_counter()
    try:
        if kind == "half_body":
            await _half_body(url)
            return {"kind": kind, "ok": True}
        if kind == "malformed":
            name, path, raw, ctype = rng.choice(MALFORMED)
            r = await client.post(url + path, content=raw, headers={"Content-Type": ctype})
            good = 400 <= r.status_code < 500 and "error" in r.json()
            return {"kind": kind, "ok": good, "why": f"{name}: HTTP {r.status_code} {r.text[:120]}"}
        body = _body(kind, i, max_tokens)
        path = "/v1/completions" if kind == "completion" else CHAT
        if not body.get("stream"):
            r = await client.post(url + path, json=body)
            good = r.status_code == 200 and bool(r.json().get("choices"))
            return {"kind": kind, "ok": good, "why": f"HTTP {r.status_code} {r.text[:120]}",
                    "latency": time.perf_counter() - t0}
        async with client.stream("POST", url + path, json=body) as r:
            if r.status_code != 200:
                await r.aread()
                return {"kind": kind, "ok": False, "why": f"HTTP {r.status_code} {r.text[:120]}"}
            usage = False
            async for line in r.aiter_lines():
                if kind == "drop" and line.startswith("data: "):
                    return {"kind": kind, "ok": True}  # leaving the block closes the connection mid-stream
                if line.startswith("data: {"):
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        return {"kind": kind, "ok": False, "why": chunk["error"].get("message", "")}
                    usage = usage or bool(chunk.get("usage"))
            return {"kind": kind, "ok": usage, "why": "stream ended without a usage chunk",
                    "latency": time.perf_counter() - t0}
    except Exception as e:  # noqa: BLE001 (a dropped connection is an unexpected outcome, reported)
        return {"kind": kind, "ok": False, "why": f"{type(e).__name__}: {e}"}


async def _soak(url: str, clients: int, per_client: int, max_tokens: int, seed: int) -> list[dict]:
    import httpx

    async def client_loop(c, k):
        rng = random.Random(seed * 100_003 + k)
        return [await _one(c, url, rng.choice(KINDS), k * 1000 + j, max_tokens, rng) for j in range(per_client)]

    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=clients + 4)) as c:
        return [r for rs in await asyncio.gather(*(client_loop(c, k) for k in range(clients))) for r in rs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--requests-per-client", type=int, default=20)
    ap.add_argument("--max-tokens", type=int, default=16, help="completion tokens per good request")
    ap.add_argument("--config", choices=["31m", "tiny"], default="tiny", help="model shape (default tiny)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import httpx

    tmp = Path(tempfile.mkdtemp(prefix="krllm-serve-soak-"))
    log = tmp / "server.log"
    server = ServerProcess(bench_model(tmp / "bench", args.config), "--max-batch", "16", "--log-level", "warning",
                           "--set", f"limits.max_concurrent={args.clients * 2}", stderr=log)
    try:
        asyncio.run(_soak(server.url, 2, 2, 4, seed=-1))  # warm-up (compiles the decode step)
        rss_before = server.rss()
        t0 = time.perf_counter()
        results = asyncio.run(_soak(server.url, args.clients, args.requests_per_client, args.max_tokens, args.seed))
        wall = time.perf_counter() - t0
        time.sleep(1.0)  # let the server finish logging dropped clients
        rss_after = server.rss()
        alive = httpx.get(server.url + "/health", timeout=10).json()["status"] == "ok"
    finally:
        server.stop()
    tracebacks = log.read_text(errors="replace").count("Traceback")
    bad = [r for r in results if not r["ok"]]
    lat = [r["latency"] for r in results if r["ok"] and "latency" in r]
    kinds = Counter(r["kind"] for r in results)
    print(f"{len(results)} requests from {args.clients} clients in {wall:.1f}s: "
          + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())))
    print(f"unexpected outcomes: {len(bad)} (target 0); tracebacks in the server log: {tracebacks}; "
          f"server healthy after: {alive}")
    for why, n in Counter(f"{r['kind']}: {r.get('why', '')}" for r in bad).most_common(10):
        print(f"  {n} x {why}")
    print(f"good-request latency p50 {percentile(lat, 0.5):.2f}s p99 {percentile(lat, 0.99):.2f}s")
    print(f"server RSS after warm-up {rss_before / 2**20:.0f} MiB, after the soak {rss_after / 2**20:.0f} MiB "
          f"({(rss_after - rss_before) / 2**20:+.0f} MiB), peak {server.peak['rss'] / 2**20:.0f} MiB")
    print(f"server log: {log}")
    if bad or tracebacks or not alive:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
