"""Prompt variations: the same math questions under several prompt templates, accuracy per template.

    krllm eval prompts runs/demo_ko/math_grpo/merged --data builtin:math:ko --n 40
    krllm eval prompts DIR --template plain --template "coach=당신은 코치입니다.\\n\\n{question}"

The workshop's three templates (plain question, step-by-step instruction, a persona) are built in;
`NAME=TEXT` adds one of your own (TEXT holds `{question}`). Answers are greedy, decoded in one batch
through krllm's engine (krllm.eval.generate.greedy_answers), and scored by the one rule of the math
eval and the GRPO reward (krllm.data.answers.is_correct). The bar plot shows accuracy per template with
the count of right answers on each bar.
"""

from __future__ import annotations

from pathlib import Path

from krllm.errors import UsageError

TEMPLATES = {
    "plain": "{question}",
    "step": "{question}\n\n단계별로 차근차근 풀이한 뒤, 마지막 줄에 '정답: <숫자>' 형식으로 답하세요.",
    "persona": "당신은 꼼꼼하고 친절한 수학 선생님입니다. 학생의 질문에 정확하게 답해 주세요.\n\n{question}",
}


def parse_templates(items: list[str] | None) -> dict[str, str]:
    """`plain`, `step`, `persona` or `NAME=TEXT` (TEXT with {question}) -> {name: template}; none = all three."""
    if not items:
        return dict(TEMPLATES)
    out = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep:
            if name not in TEMPLATES:
                raise UsageError(f"--template {item!r}: unknown; built in: {', '.join(TEMPLATES)}, or NAME=TEXT")
            text = TEMPLATES[name]
        if not name or "{question}" not in text:
            raise UsageError(f"--template {item!r}: expected NAME=TEXT with {{question}} where the question goes")
        if name in out:
            raise UsageError(f"--template {name!r} given twice")
        out[name] = text.replace("\\n", "\n")
    return out


def evaluate_templates(lm, problems: list[dict], templates: dict[str, str], max_new_tokens: int = 96,
                       batch_size: int = 32, system: str | None = None) -> dict:
    """{name: {"accuracy", "correct", "n", "examples"}} for GRPO-style problems {prompt, ground_truth_answer}."""
    from krllm.eval.generate import greedy_answers
    from krllm.eval.math import exact_match, is_correct

    questions = [p["prompt"][-1]["content"] for p in problems]
    truths = [p["ground_truth_answer"] for p in problems]
    names = list(templates)
    rendered = [templates[name].replace("{question}", q) for name in names for q in questions]
    got = greedy_answers(lm, rendered, max_new_tokens=max_new_tokens, system=system, batch_size=batch_size)
    out = {}
    for i, name in enumerate(names):
        answers = got[i * len(questions):(i + 1) * len(questions)]
        em = exact_match([a["answer"] for a in answers], truths)
        em["template"] = templates[name]
        em["examples"] = [{"question": q, "truth": t, "answer": a["answer"], "correct": is_correct(a["answer"], t)}
                          for q, t, a in zip(questions, truths, answers)]
        out[name] = em
    return out


def plot_accuracy(results: dict, path: Path, title: str) -> Path:
    """A bar per template: accuracy (%), with `correct/n` written on each bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    values = [100 * results[n]["accuracy"] for n in names]
    fig, ax = plt.subplots(figsize=(7.0, 4.0), dpi=110)
    bars = ax.bar(names, values, color="#1f77b4")
    for bar, name in zip(bars, names):
        ax.annotate(f"{results[name]['correct']}/{results[name]['n']}", (bar.get_x() + bar.get_width() / 2,
                    bar.get_height()), ha="center", va="bottom", fontsize=9)
    ax.set_ylim(0, max(100.0, max(values, default=0) + 5))
    ax.set_ylabel("exact match (%)")
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def run_prompts(model: str, data: str, out_dir, templates: dict[str, str], n: int = 40, seed: int = 9002,
                max_new_tokens: int = 96, batch_size: int = 32, system: str | None = None, device: str = "cpu",
                columns: dict[str, str] | None = None) -> dict:
    """Evaluate one model under every template; write eval.json, samples.md and accuracy.png to out_dir."""
    import time

    from krllm.data.sets.records import load_examples
    from krllm.device import pick_device
    from krllm.model.load import load
    from krllm.runs import atomic_dir, write_json

    problems = load_examples(data, "grpo", n=n, seed=seed, system=None, columns=columns)
    t0 = time.time()
    lm = load(model, device=pick_device(device), dtype="fp32")
    results = evaluate_templates(lm, problems, templates, max_new_tokens, batch_size, system)
    out = {"model": {"path": str(model), "source": lm.source, "params": lm.num_parameters},
           "data": {"data": data, "n": len(problems), "seed": seed}, "prompts": results,
           "wall_s": round(time.time() - t0, 2)}
    with atomic_dir(out_dir) as tmp:
        write_json(tmp / "eval.json", out)
        plot_accuracy(results, tmp / "accuracy.png", f"{Path(str(model)).name}: exact match by prompt ({len(problems)} problems)")
        lines = ["# Prompt variations", "", "| template | exact match |", "|---|---|"]
        lines += [f"| {k} | {100 * v['accuracy']:.1f}% ({v['correct']}/{v['n']}) |" for k, v in results.items()]
        lines += ["", "![accuracy by template](accuracy.png)", ""]
        for k, v in results.items():
            lines += [f"## {k}", "", "```text", v["template"], "```", ""]
            ex = v["examples"][0]
            lines += [f"First problem (truth {ex['truth']}, {'right' if ex['correct'] else 'wrong'}):", "", "```text",
                      ex["answer"] or "(empty)", "```", ""]
        (tmp / "samples.md").write_text("\n".join(lines), encoding="utf-8")
    return out
