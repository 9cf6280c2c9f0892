"""SFT throughput: `krllm sft` vs a plain TRL SFTTrainer + PEFT LoRA with TRL's defaults, side by side.

    python benchmarks/sft_throughput.py                       # 3 rounds x 7 runs, ~25 min on 2 cores
    python benchmarks/sft_throughput.py --repeats 1 --no-variants   # ours vs TRL only, ~4 min

Same model (the ≈31M config: vocab 16k tied, 512 wide, 8 layers, random weights), same chat data
(ChatML conversations whose lengths spread uniformly over 20-1000 tokens, built from the generated
NPC dialogues), same LoRA (r 16, alpha 32, all-linear), same batch size 8 and one epoch, so both
see the same tokens. Each run is a fresh process (its own peak RSS); every round runs each kind once,
in rotated order, so a busy machine slows all alike; medians of --repeats rounds are reported.

- ours: `krllm sft` defaults (batching auto -> length_grouped on CPU, no gradient checkpointing,
  autocast dtype auto), loss on assistant tokens.
- TRL: `SFTConfig` defaults (random batches padded to the longest, gradient checkpointing on,
  bf16 on, full-sequence loss) — what a user gets from the TRL quick start.
- variants (unless --no-variants): ours with the loss on every token like TRL's default
  (`ours:all`: the output head then scores every real position), with gradient checkpointing (the
  memory/speed trade-off), with `batching: packed` and `random`, and TRL with `packing=True` (bfd,
  padding-free), to show why `auto` picks length_grouped on CPU.

Real tokens/s = non-pad tokens of the epoch / `trainer.train()` time (data preparation excluded for
both), per CPU-second (robust to other load on a shared machine; the headline) and per wall
second. The cross-document check runs one real packed batch of the 31M model and compares each
document's logits with the document run alone.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# ≈31M parameters with a 16k vocabulary (tied): the size class of benchmarks/decode.py and pretraining.
BENCH_31M = dict(vocab_size=16000, hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                 num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=1024,
                 tie_word_embeddings=True)
LORA = dict(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear")
BATCH, MAX_LEN = 8, 1024
VARIANTS = ["ours:all", "ours:gc", "ours:packed", "ours:random", "trl:packing"]


# ---------------------------------------------------------------- set-up (parent)

def build_inputs(root: Path, n_examples: int, seed: int) -> tuple[Path, Path]:
    """Tokenizer (krllm's trainer) + random 31M model dir + chat JSONL with lengths ~U(20, 1000)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from krllm.data.sets.generated import npc_dialogues
    from krllm.tokenizer.train import train_tokenizer

    model_dir = root / "base"
    train_tokenizer(model_dir, sources=["builtin:ko-law", "builtin:npc"], vocab_size=8000, progress=False)
    tok = AutoTokenizer.from_pretrained(model_dir)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**BENCH_31M, bos_token_id=0, eos_token_id=0, pad_token_id=1)).save_pretrained(
        model_dir)

    rng = random.Random(seed)
    pool = npc_dialogues(2000, seed=seed)
    rows, lengths = [], []
    for _ in range(n_examples):
        target = rng.randint(20, 1000)
        msgs: list[dict] = []
        while True:
            d = pool[rng.randrange(len(pool))]
            turn = [{"role": "user", "content": d["input"]}, {"role": "assistant", "content": d["output"]}]
            n = len(tok.apply_chat_template(msgs + turn)["input_ids"])
            if n > target and msgs:
                break
            msgs += turn
            if n >= target:
                break
        while len(tok.apply_chat_template(msgs)["input_ids"]) > target and len(msgs[-1]["content"]) > 1:
            msgs[-1]["content"] = msgs[-1]["content"][: int(len(msgs[-1]["content"]) * 0.8)]  # short chats
        rows.append({"messages": msgs})
        lengths.append(len(tok.apply_chat_template(msgs)["input_ids"]))
    data = root / "chats.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"data: {n_examples} chats, {sum(lengths):,} tokens, lengths min {min(lengths)} / median "
          f"{sorted(lengths)[len(lengths) // 2]} / max {max(lengths)}")
    return model_dir, data


# ---------------------------------------------------------------- one run (child process)

def _time_trainer_train() -> list:
    """Record (CPU seconds, wall seconds) of every `Trainer.train()` call in this process.

    CPU seconds of a 1-thread run measure the work done, whatever else the machine is running;
    wall seconds are what a user waits (and swing with the load on a shared machine).
    """
    import transformers

    times, orig = [], transformers.Trainer.train

    def timed(self, *args, **kwargs):
        c, w = time.process_time(), time.perf_counter()
        out = orig(self, *args, **kwargs)
        times.append((time.process_time() - c, time.perf_counter() - w))
        return out

    transformers.Trainer.train = timed
    return times


def child(kind: str, model_dir: str, data: str, out: str, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    times = _time_trainer_train()
    if kind.startswith("ours"):
        from krllm.config import validate
        from krllm.train.sft import run_sft
        from krllm.train.sft_config import SFTRunConfig

        variant = kind.split(":")[1] if ":" in kind else "auto"
        batching = "auto" if variant in ("gc", "all") else variant
        cfg = validate({
            "name": "bench", "runs_dir": out, "base_model": model_dir, "merge": False,
            "data": {"train": data, "eval_fraction": 0, "max_length": MAX_LEN,
                     "loss_on": "all" if variant == "all" else "assistant"},
            "peft": {"r": LORA["r"], "alpha": LORA["lora_alpha"], "dropout": LORA["lora_dropout"],
                     "target_modules": LORA["target_modules"]},
            "train": {"batch_size": BATCH, "epochs": 1, "batching": batching, "logging_steps": 1000,
                      "save_steps": 100000, "gradient_checkpointing": variant == "gc"},
            "samples": {"n": 0}, "tracking": {"tensorboard": False}}, SFTRunConfig)
        s = run_sft(cfg)
        res = {"runtime": s["train_runtime_s"], "tokens": s["data"]["tokens"], "steps": s["steps"],
               "batching": s["batching"] + {"gc": " + grad ckpt", "all": ", loss on all"}.get(variant, ""),
               "dtype": s["dtype"]}
    else:
        import datasets
        from peft import LoraConfig
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from trl import SFTConfig, SFTTrainer

        tok = AutoTokenizer.from_pretrained(model_dir)
        ds = datasets.Dataset.from_list([json.loads(x) for x in Path(data).read_text().splitlines()])
        args = SFTConfig(output_dir=out, per_device_train_batch_size=BATCH, num_train_epochs=1, report_to="none",
                         save_strategy="no", use_cpu=True, disable_tqdm=True, packing=kind == "trl:packing")
        trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(model_dir), args=args, train_dataset=ds,
                             processing_class=tok, peft_config=LoraConfig(task_type="CAUSAL_LM", **LORA))
        tokens = sum(len(x) for x in trainer.train_dataset["input_ids"])
        r = trainer.train()
        res = {"runtime": r.metrics["train_runtime"], "tokens": tokens, "steps": trainer.state.global_step,
               "batching": "bfd packing (padding-free)" if args.packing else "random, padded",
               "dtype": "bfloat16" if args.bf16 else "float32", "gradient_checkpointing": args.gradient_checkpointing}
    cpu, wall = times[-1]
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res["tok_per_s"] = res["tokens"] / wall
    res["tok_per_cpu_s"] = res["tokens"] / cpu
    return res


def run_child(kind: str, model_dir: Path, data: Path, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false"}
        p = subprocess.run([sys.executable, __file__, "--child", kind, str(model_dir), str(data), out,
                            str(threads)], env=env, capture_output=True, text=True)
        if p.returncode != 0:
            raise SystemExit(f"{kind} failed:\n{p.stderr[-4000:]}")
        return json.loads(p.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- cross-document check

def cross_document_check(model_dir: Path, data: Path) -> float:
    """One real packed batch of the 31M model: each document's logits == the document alone."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from krllm.data.sets.records import load_jsonl
    from krllm.train.hf.batching import PackedCollator, pack_rows
    from krllm.train.sft_data import tokenize_records

    tok = AutoTokenizer.from_pretrained(model_dir)
    rows, _ = tokenize_records(load_jsonl(data, "sft"), tok, MAX_LEN)
    rows = sorted(rows, key=lambda r: r["length"])[:4]  # short ones: several share a row
    batch = PackedCollator(tok.pad_token_id, MAX_LEN)(rows)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    worst = 0.0
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        for r, row in enumerate(pack_rows([x["length"] for x in rows], MAX_LEN)):
            t = 0
            for i in row:
                ids = torch.tensor([rows[i]["input_ids"]])
                alone = model(input_ids=ids, use_cache=False).logits[0]
                worst = max(worst, (packed[r, t: t + ids.shape[1]] - alone).abs().max().item())
                t += ids.shape[1]
    return worst


# ---------------------------------------------------------------- main

def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, model_dir, data, out, threads = sys.argv[2:7]
        print(json.dumps(child(kind, model_dir, data, out, int(threads))))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=32, help="chats in the epoch (default 32, ~16K tokens)")
    ap.add_argument("--repeats", type=int, default=3, help="rounds; each runs every kind once, rotated (median)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1: CPU time then "
                    "measures work; 2 threads on 2 shared cores spin and swing wildly)")
    ap.add_argument("--no-variants", action="store_true", help="skip packed/random/TRL-packing variants")
    ap.add_argument("--kinds", default="", help=f"comma-separated variants to run besides ours and trl, from "
                    f"{','.join(VARIANTS)} (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f} (runs rotate, so load hits all alike)")
    kinds = ["ours", "trl"] + ([] if args.no_variants else VARIANTS)
    if args.kinds:
        kinds = ["ours", "trl"] + [k for k in args.kinds.split(",") if k not in ("ours", "trl")]
    with tempfile.TemporaryDirectory() as root:
        model_dir, data = build_inputs(Path(root), args.examples, args.seed)
        results: dict[str, list[dict]] = {k: [] for k in kinds}
        for i in range(args.repeats):
            for kind in kinds[i % len(kinds):] + kinds[: i % len(kinds)]:
                results[kind].append(run_child(kind, model_dir, data, args.threads))
                r = results[kind][-1]
                print(f"  round {i + 1} {kind:<12} {r['tok_per_cpu_s']:7,.0f} tok/CPU-s {r['tok_per_s']:7,.0f} tok/s "
                      f"(load {os.getloadavg()[0]:.1f})", flush=True)
        worst = cross_document_check(model_dir, data)

    cpu = {k: statistics.median(r["tok_per_cpu_s"] for r in v) for k, v in results.items()}
    wall = {k: statistics.median(r["tok_per_s"] for r in v) for k, v in results.items()}
    rss = {k: max(r["peak_rss_mb"] for r in v) for k, v in results.items()}
    print(f"\nmedians of {args.repeats} runs, {args.threads} thread(s); real = non-pad tokens of one epoch")
    print(f"{'run':<13}{'batching':<28}{'tokens':>8}{'steps':>6}{'tok/CPU-s':>11}{'vs TRL':>8}{'tok/s wall':>12}"
          f"{'vs TRL':>8}{'peak RSS MB':>13}")
    for k, v in results.items():
        r = v[0]
        print(f"{k:<13}{r['batching']:<28}{r['tokens']:>8,}{r['steps']:>6}{cpu[k]:>11,.0f}{cpu[k] / cpu['trl']:>7.2f}x"
              f"{wall[k]:>12,.0f}{wall[k] / wall['trl']:>7.2f}x{rss[k]:>13,.0f}")
    print(f"\nkrllm sft / TRL defaults: {cpu['ours'] / cpu['trl']:.2f}x real tokens per CPU-second, "
          f"{wall['ours'] / wall['trl']:.2f}x per wall second (target >= 1.3x); peak RSS {rss['ours']:,.0f} vs "
          f"{rss['trl']:,.0f} MB")
    print(f"same tokens seen: {results['ours'][0]['tokens']:,} vs {results['trl'][0]['tokens']:,}")
    print(f"cross-document attention in a packed 31M batch: max |logit(packed) - logit(alone)| = {worst:.2e} "
          f"({'none' if worst < 1e-3 else 'LEAK'})")


if __name__ == "__main__":
    main()
