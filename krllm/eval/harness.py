"""lm-evaluation-harness on a krllm model directory (or a PEFT adapter directory): `krllm eval harness`.

    krllm eval harness runs/demo_ko/sft/merged --tasks kobest_boolq,kobest_copa --limit 200   # online: Hub data
    krllm eval harness DIR --tasks my_task --include-path benchmarks/harness                      # offline: local JSONL

Why a bridge and not our own copies of the benchmarks: the harness is what papers and model cards
report, so its task definitions, prompts and metrics are used as they are (`lm_eval.simple_evaluate`
with its `hf` model class, the same call the `lm_eval` command line makes). krllm only turns a model
or adapter directory into the harness's model arguments (`pretrained=DIR`, or `pretrained=BASE,peft=DIR`),
keeps everything local (`HF_HUB_OFFLINE` for the model), and writes results.json + per-task samples.

Korean tasks (online, datasets from the Hub): kobest_boolq, kobest_copa, kobest_hellaswag,
kobest_sentineg, kobest_wic (group `kobest`), kmmlu (group; kmmlu_direct for generation), haerae
(haerae_general_knowledge, haerae_history, ...). Offline, a task YAML over a local JSONL (dataset_path:
json, dataset_kwargs.data_files) runs anywhere: see benchmarks/harness/ and docs/evaluation.md.
Needs the extra: pip install "lm-eval[hf]".
"""

from __future__ import annotations

import json
from pathlib import Path

from krllm.errors import KrllmError, UsageError

INSTALL = 'lm-evaluation-harness is not installed: pip install "lm-eval[hf]"'


def harness_model_args(target: str | Path, dtype: str = "float32") -> dict:
    """The `hf` model's arguments for a model directory or a PEFT adapter directory (its recorded base)."""
    path = Path(target)
    if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
        raise UsageError(f"{path}: not a model directory (no config.json) nor an adapter (no adapter_config.json)")
    args: dict = {"dtype": dtype}
    if (path / "adapter_config.json").is_file():
        base = json.loads((path / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
        if not base or not Path(base).is_dir():
            raise KrllmError(f"{path}: adapter's base model {base!r} is not a local directory; merge it first "
                             "(krllm merge) or evaluate the merged directory")
        args.update(pretrained=str(base), peft=str(path), tokenizer=str(path if (path / "tokenizer.json").is_file()
                                                                          else base))
    else:
        args["pretrained"] = str(path)
    return args


def run_harness(target: str | Path, tasks: list[str], out_dir: str | Path | None = None,
                include_path: str | None = None, limit: int | float | None = None, num_fewshot: int | None = None,
                batch_size: int = 1, device: str = "cpu", dtype: str = "float32",
                apply_chat_template: bool = False, seed: int = 0) -> dict:
    """lm_eval.simple_evaluate on the model; returns {"results", "n-samples", "versions", "model_args"} and
    writes out_dir/results.json and out_dir/samples_<task>.jsonl."""
    try:
        from lm_eval import simple_evaluate
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise KrllmError(INSTALL) from None
    if not tasks:
        raise UsageError("--tasks: name at least one task (e.g. kobest_copa, or yours with --include-path)")
    if include_path and not Path(include_path).is_dir():
        raise UsageError(f"--include-path {include_path}: not a directory of task YAML files")
    manager = TaskManager(include_path=include_path)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise UsageError(f"unknown harness task(s) {unknown}; list them with `lm-eval ls tasks`"
                         + (f" (tasks under {include_path} included)" if include_path else
                            "; a local task YAML needs --include-path DIR"))
    model_args = harness_model_args(target, dtype)
    out = simple_evaluate(model="hf", model_args=model_args, tasks=tasks, task_manager=manager, limit=limit,
                          num_fewshot=num_fewshot, batch_size=batch_size, device=device, log_samples=True,
                          apply_chat_template=apply_chat_template, random_seed=seed, numpy_random_seed=seed,
                          torch_random_seed=seed, fewshot_random_seed=seed)
    result = {"results": out["results"], "n-samples": out.get("n-samples", {}), "versions": out.get("versions", {}),
              "model_args": model_args, "tasks": tasks, "limit": limit, "num_fewshot": num_fewshot}
    if out_dir is not None:
        from krllm.runs import atomic_dir, write_json

        with atomic_dir(out_dir) as tmp:
            write_json(tmp / "results.json", result)
            for task, samples in (out.get("samples") or {}).items():
                (tmp / f"samples_{task}.jsonl").write_text(
                    "".join(json.dumps(s, ensure_ascii=False, default=str) + "\n" for s in samples), encoding="utf-8")
    return result


def summary_lines(result: dict) -> list[str]:
    """`task  metric  value (± stderr)` lines of every numeric metric."""
    lines = []
    for task, metrics in result["results"].items():
        for key, value in metrics.items():
            if key.endswith("_stderr") or "_stderr," in key or not isinstance(value, (int, float)) or key == "alias":
                continue
            metric, _, filt = key.partition(",")
            err = metrics.get(f"{metric}_stderr,{filt}")
            shown = f"{value:.4f}" + (f" ± {err:.4f}" if isinstance(err, (int, float)) else "")
            lines.append(f"{task:<28} {metric:<16} {filt:<10} {shown}")
    return lines
