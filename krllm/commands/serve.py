"""`krllm serve DIR`: OpenAI-compatible API at /v1 and a chat page at /, on 127.0.0.1:8000.

    krllm serve runs/demo/sft --port 8000
    krllm serve runs/demo/hf --api-key secret --set engine.max_batch=32 --set limits.max_tokens=512
    krllm serve runs/demo/sft --allowed-host myhost.lan --cors-origin http://localhost:3000
    curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
         -d '{"model": "sft", "messages": [{"role": "user", "content": "안녕하세요"}]}'
"""

from __future__ import annotations

import os


def add_arguments(p) -> None:
    p.add_argument("model", help="model directory: HF model dir, PEFT adapter dir, or a run dir (serves merged/, "
                   "else hf/, else adapter/)")
    p.add_argument("--base", default=None, help="base model directory for an adapter (default: the one recorded "
                   "in adapter_config.json)")
    p.add_argument("--config", default=None, help="YAML serving config (see configs/serve/default.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set limits.max_tokens=512 "
                   "(repeatable; KEY={a: 1} merges into section KEY)")
    p.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1 = this machine only; "
                   "0.0.0.0 exposes the server: set an API key then)")
    p.add_argument("--port", type=int, default=None, help="TCP port (default 8000; 0 = any free port)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1 "
                   "(default: $KRLLM_API_KEY; unset = no auth)")
    p.add_argument("--allowed-host", dest="allowed_hosts", action="append", default=[], metavar="NAME",
                   help="also answer requests whose Host header is NAME (repeatable; '*' = any). Bound to "
                   "127.0.0.1 the server answers only localhost / 127.0.0.1 / [::1] (against DNS rebinding); "
                   "add the name a reverse proxy or another machine uses")
    p.add_argument("--cors-origin", dest="cors_origins", action="append", default=[], metavar="ORIGIN",
                   help="let web pages from ORIGIN (e.g. http://localhost:3000) call the API (repeatable; "
                   "'*' = any; default: none, browsers keep other sites out)")
    p.add_argument("--model-name", default=None, help="model id in /v1/models (default: directory name)")
    p.add_argument("--max-batch", type=int, default=None, help="sequences decoded together (KV-cache slots; "
                   "default 16)")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, mps")
    p.add_argument("--dtype", default=None, help="auto, fp32, bf16, fp16, int8 or int4 (int8/int4: weights quantized at load, "
                   "see docs/quantization.md; default from the config: auto = bf16 "
                   "where the device multiplies it natively, e.g. CPUs with AVX-512 BF16, else fp32)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default 0 = all cores; 1 is often "
                   "faster on a machine busy with other jobs)")
    p.add_argument("--log-level", default="info", help="uvicorn log level: debug, info, warning (default info)")


def run(args) -> int:
    import uvicorn
    from rich.console import Console

    from krllm.config import load_config
    from krllm.infer.config import ServeConfig
    from krllm.infer.scheduler import Scheduler
    from krllm.infer.server import create_app, is_loopback
    from krllm.infer.startup import describe, make_engine
    from krllm.model.load import load

    overrides = list(args.overrides)
    for key, value in (("host", args.host), ("port", args.port), ("model_name", args.model_name),
                       ("engine.max_batch", args.max_batch), ("engine.device", args.device),
                       ("engine.dtype", args.dtype), ("engine.threads", args.threads)):
        if value is not None:
            overrides.append(f"{key}={value}")
    cfg = load_config(args.config, ServeConfig, overrides)
    api_key = args.api_key or os.environ.get("KRLLM_API_KEY") or None
    console = Console(stderr=True)
    sock = _bind(cfg.host, cfg.port)  # before loading the model: a busy port fails in a second, not after
    port = sock.getsockname()[1]  # the real one when --port 0
    if cfg.engine.threads:
        import torch

        torch.set_num_threads(cfg.engine.threads)
    with console.status("loading model…"):
        lm = load(args.model, base=args.base, device=cfg.engine.device, dtype=cfg.engine.dtype,
                  name=cfg.model_name)
        engine = make_engine(lm, cfg.engine.max_batch, cfg.engine.max_seq_len, cfg.engine.prefill_chunk,
                             cfg.engine.kv_dtype)
    console.print(describe(lm, engine))
    scheduler = Scheduler(engine)
    app = create_app(lm, scheduler, cfg, api_key, allowed_hosts=args.allowed_hosts, cors_origins=args.cors_origins)
    shown = "127.0.0.1" if cfg.host in ("0.0.0.0", "::") else cfg.host
    shown = f"[{shown}]" if ":" in shown else shown
    console.print(f"serving [bold]{cfg.model_name or lm.name}[/] — chat page http://{shown}:{port}/ , "
                  f"OpenAI API http://{shown}:{port}/v1 ({'API key required' if api_key else 'no API key'})")
    if not is_loopback(cfg.host) and not api_key:
        console.print(f"[yellow]warning:[/] listening on {cfg.host} without an API key: anyone who can reach "
                      "this machine can use the model")
    try:
        uvicorn.Server(uvicorn.Config(app, log_level=args.log_level)).run(sockets=[sock])
    finally:
        scheduler.close()
    return 0


def _bind(host: str, port: int):
    """A listening socket on host:port (0 = any free port), or a clear error when it is taken."""
    import socket

    from krllm.errors import KrllmError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise KrllmError(f"cannot listen on {host}:{port}: {e.strerror} (another server there? pick "
                         "another --port, or 0 for any free one)") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock
