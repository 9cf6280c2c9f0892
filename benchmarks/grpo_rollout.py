"""GRPO optimizer-step time: `krllm grpo` vs TRL's GRPOTrainer as it comes, side by side.

Same model, same data (built-in Korean math prompts), same GRPO settings, same seed. Three sides:

    krllm          krllm grpo: rollouts on krllm's engine (krllm.infer.rollout: a merged copy of the live
                   policy, all completions of the step in one batched pass, the C step on CPU) and the
                   log-probabilities of krllm.train.grpo_loss (each prompt once, head on completions)
    trl-generate   TRL's own `generate` on the PEFT-wrapped policy, krllm's log-probabilities: isolates
                   what the rollouts alone are worth
    trl            TRL's generate and TRL's log-probabilities: the stock GRPOTrainer

Each repeat trains every side in turn for `--steps` optimizer steps from the same starting weights;
the first step of each run (start-up) is not counted, and the median step time over repeats is
reported, so a busy machine slows all alike.

    python benchmarks/grpo_rollout.py                                  # ≈31M random model + the demo model
    python benchmarks/grpo_rollout.py --models demo --steps 4 --repeats 3
    python benchmarks/grpo_rollout.py --models DIR                     # any HF causal-LM directory

Models: `31m` = the ≈31M config of benchmarks/pretrain_throughput.py with random weights and the demo's
tokenizer (random weights rarely stop, so every completion runs to max_completion_length: the worst
case for both); `demo` = runs/demo_ko/pretrain/hf after `make demo` (completions stop on their own).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

DEMO = Path("runs/demo_ko/pretrain/hf")
BENCH_31M = dict(vocab_size=8000, hidden_size=512, intermediate_size=1376, num_hidden_layers=8,
                 num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=512,
                 tie_word_embeddings=False)


class StepTimes(TrainerCallback):
    def __init__(self):
        self.times, self._t = [], None

    def on_step_begin(self, args, state, control, **kw):
        self._t = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self.times.append(time.perf_counter() - self._t)


def random_31m(out: Path, tokenizer_dir: Path) -> Path:
    from krllm.model.config import ModelConfig
    from krllm.model.hf import save_hf
    from krllm.model.llama import Llama

    torch.manual_seed(0)
    cfg = ModelConfig(**{**BENCH_31M, "vocab_size": max(BENCH_31M["vocab_size"], _vocab(tokenizer_dir))})
    save_hf(Llama(cfg), out, tokenizer_dir=tokenizer_dir)
    return out


def _vocab(tokenizer_dir: Path) -> int:
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(tokenizer_dir))


SIDES = {"krllm": ("krllm", True), "trl-generate": ("transformers", True), "trl": ("transformers", False)}


def run_side(model_dir: Path, side: str, args, work: Path) -> tuple[list[float], dict]:
    """Train `args.steps` GRPO steps on one side -> (step seconds after the first, summary)."""
    from krllm.config import validate
    from krllm.device import pick_device, pick_dtype
    from krllm.train.grpo import make_trainer
    from krllm.train.grpo_config import GRPORunConfig
    from krllm.train.hf.data import split_records
    from krllm.train.hf.model import load_causal_lm, load_tokenizer

    rollout, krllm_logps = SIDES[side]
    cfg = validate({"name": f"bench_{side}", "runs_dir": str(work), "base_model": str(model_dir),
                    "data": {"train": "builtin:math:ko", "n": 64, "seed": 0},
                    "grpo": {"num_generations": args.generations, "max_completion_length": args.max_new,
                             "rollout": rollout, "beta": args.beta},
                    "train": {"batch_size": args.generations * args.prompts, "max_steps": args.steps,
                              "lr": 1e-5, "save_steps": 10_000, "logging_steps": 1, "seed": 0},
                    "tracking": {"tensorboard": False}}, GRPORunConfig)
    device = pick_device("cpu")
    dtype = pick_dtype("fp32", device)
    tok = load_tokenizer(str(model_dir))
    train, _ = split_records(cfg.data, "grpo")
    torch.manual_seed(0)
    model = load_causal_lm(str(model_dir), tok, cfg.peft, dtype)
    trainer = make_trainer(cfg, work / cfg.name, tok, model, train, [], device, dtype)
    trainer.krllm_compact_logps = krllm_logps
    timer = StepTimes()
    trainer.add_callback(timer)
    trainer.train()
    mean_len = [x for x in trainer.state.log_history if "completions/mean_length" in x]
    info = {"completion_len": statistics.mean(x["completions/mean_length"] for x in mean_len) if mean_len else None}
    if trainer.rollout_func is not None:
        info["path"] = trainer.rollout_func.stats.path
    return timer.times[1:], info


def bench(name: str, model_dir: Path, args) -> None:
    times = {side: [] for side in SIDES}
    info = {}
    with tempfile.TemporaryDirectory() as d:
        for r in range(args.repeats):
            for side in times:
                t, info[side] = run_side(model_dir, side, args, Path(d) / f"r{r}")
                times[side].append(statistics.median(t))
    step = {side: statistics.median(t) for side, t in times.items()}
    print(f"\n{name}: {args.prompts} prompts x {args.generations} generations, <= {args.max_new} new tokens, "
          f"LoRA, fp32, {torch.get_num_threads()} threads")
    for side, t in step.items():
        length = info[side]["completion_len"]
        print(f"  {side:13s} {t:7.2f} s/step" + (f"   (mean completion {length:.0f} tokens)" if length else ""))
    print(f"  krllm grpo vs stock TRL: {step['trl'] / step['krllm']:.2f}x faster steps   ({info['krllm'].get('path')})")
    print(f"  rollouts alone (same log-probabilities): {step['trl-generate'] / step['krllm']:.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["31m", "demo"], help="31m | demo | an HF model directory")
    p.add_argument("--steps", type=int, default=4, help="optimizer steps per run (the first is not timed)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--prompts", type=int, default=4, help="prompts per step")
    p.add_argument("--generations", type=int, default=8, help="completions per prompt")
    p.add_argument("--max-new", type=int, default=96, help="max_completion_length")
    p.add_argument("--beta", type=float, default=0.0, help="KL coefficient (0: no reference forward)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        for name in args.models:
            if name == "demo":
                if not DEMO.is_dir():
                    print(f"skip demo: {DEMO} not found (run `make demo` first)")
                    continue
                bench("demo model (runs/demo_ko/pretrain/hf)", DEMO, args)
            elif name == "31m":
                tok_dir = DEMO if DEMO.is_dir() else None
                if tok_dir is None:
                    print("skip 31m: needs the demo's tokenizer (run `make demo` first)")
                    continue
                bench("≈31M random model", random_31m(Path(d) / "m31", tok_dir), args)
            else:
                bench(name, Path(name), args)


if __name__ == "__main__":
    main()
