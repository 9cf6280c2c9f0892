"""Server under load: 1 vs 8 vs 32 concurrent streaming clients against `krllm serve`.

Starts `krllm serve` as a separate process on 127.0.0.1 with a random model (`--config 31m`: the
layers of the ≈31M configuration of benchmarks/decode.py, default; `tiny`: the tiny preset's) whose
vocabulary is a 400-token tokenizer trained on the spot, then for each client count runs `--requests-per-client`
streaming chat requests per client (EOS ignored, fixed `--max-tokens`), and reports aggregate
completion tokens/s, the ratio to one client, time-to-first-token and request latency
p50/p99, errors, the engine's share of wall time, tokens and milliseconds per engine step (how a
batched step's cost grows with the batch), the load generator's own CPU use (it shares the
machine's cores with the server), and the server's peak RSS. All traffic stays on 127.0.0.1.

    python benchmarks/serve_load.py
    python benchmarks/serve_load.py --clients 1 8 32 --max-tokens 64 --requests-per-client 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
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


def bench_model(out_dir: Path, config: str) -> Path:
    """A random model of the `31m` or `tiny` shape with the test tokenizer's 400-token vocabulary, so
    that every generated id decodes to text and time-to-first-token is measured on real text (a
    16k-row random head would emit ids the tiny tokenizer cannot show)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from decode import BENCH_31M

    from krllm.infer.testing import tiny_model_dir

    shape = dict(BENCH_31M) if config == "31m" else dict(
        vocab_size=8000, hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
        num_key_value_heads=4, max_position_embeddings=1024, tie_word_embeddings=True)
    shape.pop("vocab_size")
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


async def _one_request(client, url: str, i: int, max_tokens: int) -> dict:
    body = {"model": "bench", "messages": [{"role": "user", "content": f"부하 시험 {i}: 안녕하세요"}],
            "max_tokens": max_tokens, "temperature": 0.8, "seed": i, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    ttft, tokens = None, 0
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            return {"error": f"HTTP {r.status_code}"}
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            # parse only the chunks that matter: the load generator shares the server's cores, so
            # every microsecond it spends per token is taken from the server being measured
            if ttft is None or '"usage"' in line or '"error"' in line:
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    return {"error": chunk["error"]["message"]}
                if ttft is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    ttft = time.perf_counter() - t0
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
    return {"latency": time.perf_counter() - t0, "ttft": ttft or 0.0, "tokens": tokens}


async def _load(url: str, clients: int, per_client: int, max_tokens: int) -> dict:
    import httpx

    async def client_loop(c, k):
        return [await _one_request(c, url, k * 1000 + j, max_tokens) for j in range(per_client)]

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=clients + 4)) as c:
        t0, cpu0 = time.perf_counter(), time.process_time()
        results = [r for rs in await asyncio.gather(*(client_loop(c, k) for k in range(clients))) for r in rs]
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    ok = [r for r in results if "error" not in r]
    lat, ttft = [r["latency"] for r in ok], [r["ttft"] for r in ok]
    return {"clients": clients, "requests": len(results), "errors": len(results) - len(ok),
            "tokens": sum(r["tokens"] for r in ok), "wall": wall, "client_cpu": cpu / wall,
            "tok_s": sum(r["tokens"] for r in ok) / wall, "ttft_p50": statistics.median(ttft) if ttft else float("nan"),
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
    args = ap.parse_args()

    import httpx

    model = bench_model(Path(tempfile.mkdtemp(prefix="krllm-serve-load-")) / "bench", args.config)
    server = ServerProcess(model, "--max-batch", str(args.max_batch), "--log-level", "warning",
                           "--threads", str(args.threads), "--dtype", args.dtype,
                           "--set", f"limits.max_concurrent={max(64, max(args.clients) * 2)}")
    url, peak = server.url, server.peak
    try:
        asyncio.run(_load(url, 2, 1, 8))  # warm-up
        print(f"krllm serve on {url}: random {args.config} model, --dtype {args.dtype}, {args.max_batch} slots; "
              f"{args.requests_per_client} streaming requests per client, {args.max_tokens} tokens each")
        print(f"{'clients':>7} {'requests':>8} {'errors':>6} {'tok/s':>8} {'vs 1':>6} {'TTFT p50':>9} "
              f"{'lat p50':>8} {'lat p99':>8} {'engine':>7} {'tok/step':>7} {'ms/step':>7} {'client CPU':>10}")
        base = None
        for n in args.clients:
            h0 = httpx.get(url + "/health").json()
            r = asyncio.run(_load(url, n, args.requests_per_client, args.max_tokens))
            h1 = httpx.get(url + "/health").json()
            busy_s = h1["engine_busy_s"] - h0["engine_busy_s"]
            r["busy"] = busy_s / r["wall"]
            r["steps"] = h1["steps"] - h0["steps"]
            r["step_ms"] = 1000 * busy_s / max(r["steps"], 1)
            base = base or r["tok_s"]
            print(f"{n:>7} {r['requests']:>8} {r['errors']:>6} {r['tok_s']:>8.1f} {r['tok_s'] / base:>5.1f}x "
                  f"{r['ttft_p50']:>8.3f}s {r['lat_p50']:>7.2f}s {r['lat_p99']:>7.2f}s {r['busy']:>7.0%} "
                  f"{r['tokens'] / max(r['steps'], 1):>8.1f} {r['step_ms']:>7.1f} {r['client_cpu']:>10.0%}")
        health = httpx.get(url + "/health").json()
        print(f"server peak RSS {peak['rss'] / 2**20:.0f} MiB; most sequences decoded together: "
              f"{health['peak_running']}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
