"""Server under load: 1 vs 8 vs 32 concurrent streaming clients against `krllm serve`.

Starts `krllm serve` as a separate process on 127.0.0.1 with a random model (`--config 31m`: the
layers of the ≈31M configuration of benchmarks/decode.py, default; `tiny`: the tiny preset's) whose
vocabulary is a 400-token tokenizer trained on the spot, then for each client count runs `--requests-per-client`
streaming chat requests per client (EOS ignored, fixed `--max-tokens`), and reports aggregate
completion tokens/s, the ratio to one client, time-to-first-token p50/p99, inter-token latency
p50/p99 (the time between two streamed chunks of one request), request latency p50/p99, errors, the engine's share of wall time, tokens and milliseconds per engine step (how a
batched step's cost grows with the batch), the load generator's own CPU use (it shares the
machine's cores with the server), and the server's peak RSS. All traffic stays on 127.0.0.1.

`--mixed` makes every other request (alternating per client) a long one of about `--long-tokens`
prompt tokens (a document or a chat history) among the short chats: the workload where a new
prompt's prefill would stall the running streams without chunked prefill (`--prefill-chunk`, the
server's engine.prefill_chunk; 0 = whole prompts, to compare).

    python benchmarks/serve_load.py
    python benchmarks/serve_load.py --clients 1 8 32 --max-tokens 64 --requests-per-client 2
    python benchmarks/serve_load.py --mixed --clients 1 8 --requests-per-client 4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else float("nan")


def bench_model(out_dir: Path, config: str, max_len: int = 0) -> Path:
    """A random model of the `31m` or `tiny` shape with the test tokenizer's 400-token vocabulary, so
    that every generated id decodes to text and time-to-first-token is measured on real text (a
    16k-row random head would emit ids the tiny tokenizer cannot show); at least `max_len` positions."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from decode import BENCH_31M

    from krllm.infer.testing import tiny_model_dir

    shape = dict(BENCH_31M) if config == "31m" else dict(
        vocab_size=8000, hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
        num_key_value_heads=4, max_position_embeddings=1024, tie_word_embeddings=True)
    shape.pop("vocab_size")
    shape["max_position_embeddings"] = max(shape["max_position_embeddings"], max_len)
    return tiny_model_dir(out_dir, initializer_range=0.02, **shape)


class ServerProcess:
    """`krllm serve MODEL ARGS` on a free 127.0.0.1 port (no API key), started and healthy; its peak
    RSS sampled every 50 ms into `peak["rss"]`; `stderr`: a file path to capture its log into."""

    def __init__(self, model: Path, *args: str, stderr: Path | None = None, timeout: float = 120):
        import httpx
        import psutil

        self.url = f"http://127.0.0.1:{_free_port()}"
        self._log = open(stderr, "w") if stderr else None  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen([sys.executable, "-m", "krllm", "serve", str(model),
                                      "--port", self.url.rsplit(":", 1)[1], *args],
                                     env={**os.environ, "KRLLM_API_KEY": ""}, stderr=self._log)
        self.peak = {"rss": 0}
        self._stop = threading.Event()
        deadline = time.time() + timeout
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise SystemExit("krllm serve did not start")
            time.sleep(0.2)
        self.ps = psutil.Process(self.proc.pid)
        threading.Thread(target=self._watch_rss, daemon=True).start()

    def rss(self) -> int:
        return self.ps.memory_info().rss

    def _watch_rss(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                self.peak["rss"] = max(self.peak["rss"], self.rss())
            except psutil.Error:
                return
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        if self._log is not None:
            self._log.close()


def long_text(model: Path, n_tokens: int) -> str:
    """A user message of about `n_tokens` tokens under the model's tokenizer (a long document)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model / "tokenizer.json"))
    parts: list[str] = []
    while len(tok.encode("".join(parts)).ids) < n_tokens:
        parts.append(f"문서 {len(parts)}: 부하 시험 안녕하세요. ")
    return "".join(parts)


async def _one_request(client, url: str, i: int, max_tokens: int, text: str = "") -> dict:
    """One streaming chat request: `text` (a long prompt) or a short greeting."""
    content = f"{i}: {text}" if text else f"부하 시험 {i}: 안녕하세요"
    body = {"model": "bench", "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens, "temperature": 0.8, "seed": i, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    ttft, tokens, last, gaps = None, 0, 0.0, []
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            return {"error": f"HTTP {r.status_code}"}
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            now = time.perf_counter()
            if ttft is not None and '"finish_reason":null' in line:  # a token chunk after the first
                gaps.append(now - last)
                last = now
            # parse only the chunks that matter: the load generator shares the server's cores, so
            # every microsecond it spends per token is taken from the server being measured
            if ttft is None or '"usage"' in line or '"error"' in line:
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    return {"error": chunk["error"]["message"]}
                if ttft is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    ttft, last = now - t0, now
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
    return {"latency": time.perf_counter() - t0, "ttft": ttft or 0.0, "tokens": tokens, "gaps": gaps,
            "long": bool(text)}


async def _load(url: str, clients: int, per_client: int, max_tokens: int, text: str = "") -> dict:
    """`clients` concurrent clients, `per_client` requests each; with a long `text`, every other request
    (alternating per client, so half the clients start with a long one) sends it."""
    import httpx

    async def client_loop(c, k):
        return [await _one_request(c, url, k * 1000 + j, max_tokens, text if (k + j) % 2 == 0 else "")
                for j in range(per_client)]

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=clients + 4)) as c:
        t0, cpu0 = time.perf_counter(), time.process_time()
        results = [r for rs in await asyncio.gather(*(client_loop(c, k) for k in range(clients))) for r in rs]
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    ok = [r for r in results if "error" not in r]
    lat, ttft = [r["latency"] for r in ok], [r["ttft"] for r in ok]
    gaps = [g for r in ok for g in r["gaps"]]
    return {"clients": clients, "requests": len(results), "errors": len(results) - len(ok),
            "long": sum(r["long"] for r in ok), "tokens": sum(r["tokens"] for r in ok), "wall": wall,
            "client_cpu": cpu / wall, "tok_s": sum(r["tokens"] for r in ok) / wall,
            "ttft_p50": percentile(ttft, 0.5), "ttft_p99": percentile(ttft, 0.99),
            "itl_p50": percentile(gaps, 0.5), "itl_p99": percentile(gaps, 0.99),
            "lat_p50": percentile(lat, 0.5), "lat_p99": percentile(lat, 0.99)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32], help="concurrent clients per round")
    ap.add_argument("--requests-per-client", type=int, default=2, help="sequential requests each client sends")
    ap.add_argument("--max-tokens", type=int, default=64, help="completion tokens per request (EOS ignored)")
    ap.add_argument("--max-batch", type=int, default=32, help="server KV-cache slots")
    ap.add_argument("--threads", type=int, default=0, help="server CPU threads (0 = torch default)")
    ap.add_argument("--config", choices=["31m", "tiny"], default="31m", help="model shape (default 31m)")
    ap.add_argument("--dtype", default="auto", help="server weights: auto (default, as `krllm serve`), fp32, bf16, int8 or int4")
    ap.add_argument("--mixed", action="store_true", help="every other request a long prompt (--long-tokens)")
    ap.add_argument("--long-tokens", type=int, default=1024, help="prompt tokens of a long request (--mixed)")
    ap.add_argument("--prefill-chunk", type=int, default=None, help="server engine.prefill_chunk: prompt tokens "
                    "per engine step (default: the server's; 0 = whole prompts)")
    args = ap.parse_args()

    import httpx

    max_len = (args.long_tokens + args.max_tokens + 64 + 63) // 64 * 64 if args.mixed else 0  # + chat template
    model = bench_model(Path(tempfile.mkdtemp(prefix="krllm-serve-load-")) / "bench", args.config, max_len)
    text = long_text(model, args.long_tokens) if args.mixed else ""
    extra = ["--set", f"engine.prefill_chunk={args.prefill_chunk}"] if args.prefill_chunk is not None else []
    server = ServerProcess(model, "--max-batch", str(args.max_batch), "--log-level", "warning",
                           "--threads", str(args.threads), "--dtype", args.dtype,
                           "--set", f"limits.max_concurrent={max(64, max(args.clients) * 2)}", *extra)
    url, peak = server.url, server.peak
    try:
        asyncio.run(_load(url, 2, 1, 8, text))  # warm-up (a long prompt too, with --mixed)
        workload = (f"every other request a ~{args.long_tokens}-token prompt" if args.mixed else "short prompts")
        print(f"krllm serve on {url}: random {args.config} model, --dtype {args.dtype}, {args.max_batch} slots, "
              f"prefill chunk {'server default' if args.prefill_chunk is None else args.prefill_chunk}; "
              f"{args.requests_per_client} streaming requests per client, {args.max_tokens} tokens each, {workload}")
        print(f"{'clients':>7} {'requests':>8} {'long':>4} {'errors':>6} {'tok/s':>8} {'vs 1':>6} {'TTFT p50':>9} "
              f"{'TTFT p99':>9} {'ITL p50':>8} {'ITL p99':>8} {'lat p50':>8} {'lat p99':>8} {'engine':>7} "
              f"{'tok/step':>7} {'ms/step':>7} {'client CPU':>10}")
        base = None
        for n in args.clients:
            h0 = httpx.get(url + "/health").json()
            r = asyncio.run(_load(url, n, args.requests_per_client, args.max_tokens, text))
            h1 = httpx.get(url + "/health").json()
            busy_s = h1["engine_busy_s"] - h0["engine_busy_s"]
            r["busy"] = busy_s / r["wall"]
            r["steps"] = h1["steps"] - h0["steps"]
            r["step_ms"] = 1000 * busy_s / max(r["steps"], 1)
            base = base or r["tok_s"]
            print(f"{n:>7} {r['requests']:>8} {r['long']:>4} {r['errors']:>6} {r['tok_s']:>8.1f} "
                  f"{r['tok_s'] / base:>5.1f}x {r['ttft_p50']:>8.3f}s {r['ttft_p99']:>8.3f}s "
                  f"{1000 * r['itl_p50']:>6.1f}ms {1000 * r['itl_p99']:>6.1f}ms "
                  f"{r['lat_p50']:>7.2f}s {r['lat_p99']:>7.2f}s {r['busy']:>7.0%} "
                  f"{r['tokens'] / max(r['steps'], 1):>8.1f} {r['step_ms']:>7.1f} {r['client_cpu']:>10.0%}")
        health = httpx.get(url + "/health").json()
        print(f"server peak RSS {peak['rss'] / 2**20:.0f} MiB; most sequences decoded together: "
              f"{health['peak_running']}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
