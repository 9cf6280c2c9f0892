"""LoRA SFT throughput and peak memory: `krllm sft --backend mlx` (mlx-lm) vs krllm's PyTorch path.

    python benchmarks/mlx_vs_torch.py                  # ~3.9M model, 192 NPC chats, 1 epoch each; ~5-9 min on 2 CPU cores
    python benchmarks/mlx_vs_torch.py --hidden 512 --layers 8 --n 512 --repeats 3     # closer to a real run

Same base model (a random Llama built here with krllm's tokenizer trained on the NPC corpus), same data
(builtin:npc, assistant-only loss), same LoRA (r 16, alpha 32, all-linear, every block), batch size 8,
AdamW at 2e-4, one epoch, no validation and no samples, fp32 weights. Each run is a fresh process.

Reported per backend (median of --repeats): tokens/s = the epoch's real (non-pad) tokens / training-loop
seconds (data preparation, model loading and output writing excluded; both include their first-step
compile), and the process's peak RSS. On a Mac the MLX run uses the Metal GPU (the device line says so)
and the PyTorch run uses MPS when available; on Linux both run on the CPU, where the ratio is reported
with no target.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from krllm.config import validate
from krllm.train.sft import run_sft
from krllm.train.sft_config import SFTRunConfig
cfg = validate(json.loads(sys.argv[1]), SFTRunConfig)
s = run_sft(cfg)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
rss_mb = rss / 1024 / 1024 if sys.platform == "darwin" else rss / 1024
print("RESULT " + json.dumps({"tokens": s["data"]["tokens"], "train_s": s["train_runtime_s"], "device": s["device"],
                              "train_loss": s["train_loss"], "steps": s["steps"], "peak_rss_mb": rss_mb,
                              "mlx_peak_gb": s.get("peak_mem_gb")}))
"""


def build_base(root: Path, hidden: int, layers: int) -> Path:
    """krllm's tokenizer on the NPC corpus + a random Llama (tied head), saved as an HF directory."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from krllm.data.sets.generated import npc_dialogues
    from krllm.tokenizer.train import train_tokenizer

    texts = [t for r in npc_dialogues(1000, seed=7) for t in (r["instruction"], r["input"], r["output"])]
    train_tokenizer(root / "tok", texts=texts, vocab_size=4000, progress=False)
    tok = AutoTokenizer.from_pretrained(root / "tok")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=int(hidden * 8 / 3) // 32 * 32,
                      num_hidden_layers=layers, num_attention_heads=max(hidden // 64, 1),
                      num_key_value_heads=max(hidden // 128, 1), max_position_embeddings=1024,
                      tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, pad_token_id=1)
    model = LlamaForCausalLM(cfg)
    print(f"base: {sum(p.numel() for p in model.parameters()):,} parameters (vocab {len(tok)}, {hidden} wide, "
          f"{layers} blocks)")
    model.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    return root / "base"


def run_config(base: Path, runs: Path, backend: str, n: int, max_length: int) -> dict:
    return {"name": f"bench_{backend}", "runs_dir": str(runs), "base_model": str(base), "backend": backend,
            "merge": False, "data": {"train": "builtin:npc", "n": n, "eval_fraction": 0, "max_length": max_length},
            "peft": {"method": "lora", "r": 16, "alpha": 32, "dropout": 0.0},
            "train": {"epochs": 1, "batch_size": 8, "lr": 2e-4, "warmup": 0, "logging_steps": 5, "save_steps": 10_000,
                      "eval_steps": 10_000, "dtype": "fp32"},
            "samples": {"n": 0}, "tracking": {"tensorboard": False}}


def run_once(cfg: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cfg)], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{cfg['backend']} run failed:\n{out.stderr[-3000:]}")
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--n", type=int, default=192, help="training chats (a multiple of 8: no partial batch)")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    import mlx.core as mx

    print(f"machine: {platform.platform()} | {platform.processor() or platform.machine()} | "
          f"mlx default device {mx.default_device()}")
    results: dict[str, list[dict]] = {"torch": [], "mlx": []}
    with tempfile.TemporaryDirectory(prefix="krllm-mlx-bench-") as tmp:
        root = Path(tmp)
        base = build_base(root, args.hidden, args.layers)
        for _ in range(args.repeats):
            for backend in ("mlx", "torch"):
                results[backend].append(run_once(run_config(base, root / f"runs{len(results[backend])}", backend,
                                                            args.n, args.max_length)))
    rows = {}
    for backend, rs in results.items():
        tps = statistics.median(r["tokens"] / r["train_s"] for r in rs)
        rows[backend] = {"tokens_per_s": round(tps, 1), "peak_rss_mb": round(statistics.median(r["peak_rss_mb"] for r in rs)),
                         "device": rs[0]["device"], "steps": rs[0]["steps"], "train_loss": round(rs[-1]["train_loss"], 4),
                         "mlx_peak_gb": rs[0].get("mlx_peak_gb")}
        print(f"{backend:5s}  {rows[backend]['tokens_per_s']:10,.1f} tok/s  peak RSS {rows[backend]['peak_rss_mb']:6,d} MB"
              f"  device {rows[backend]['device']}  steps {rows[backend]['steps']}  final train loss "
              f"{rows[backend]['train_loss']}")
    ratio = rows["mlx"]["tokens_per_s"] / rows["torch"]["tokens_per_s"]
    print(f"mlx / torch tokens/s: {ratio:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": rows, "ratio": ratio}, indent=2))


if __name__ == "__main__":
    main()
