"""The report card of a pipeline run: runs/<pipeline>/report.md (+ report.html, plots/*.png).

    krllm report runs/demo_ko          # rebuild from the run directory alone

Everything comes from files the stages left behind: the runner's state files (wall time, peak
RSS, per-stage summaries: tokens, tokens/s, parameter counts), each stage's metrics.jsonl (loss and
learning-rate curves; GRPO reward and KL, DPO reward margin and accuracy) and the eval stage's
eval.json (final metrics of every model, sample answers). When the eval holds more than two models
with math results (a math track: sft -> dpo -> grpo), a table follows the accuracy stage by stage.
"""

from __future__ import annotations

import html
import json
import time
from pathlib import Path

from krllm.config import atomic_write_text, read_yaml
from krllm.errors import KrllmError
from krllm.pipeline.state import BOOK_DIR, read_all_states
from krllm.runs import atomic_dir
from krllm.tracking import read_metrics

METRIC_ROWS = (  # (eval.json section, key, label, better)
    ("perplexity", "loss", "validation loss (pretraining text, nats/token)", "lower"),
    ("perplexity", "ppl", "validation perplexity", "lower"),
    ("npc", "loss", "NPC chat loss (held-out, assistant tokens)", "lower"),
    ("npc", "ppl", "NPC chat perplexity", "lower"),
    ("math", "accuracy", "math exact match (held-out)", "higher"),
    ("translate", "bleu", "translation BLEU (held-out pairs, sacrebleu)", "higher"),
    ("translate", "chrf", "translation chrF", "higher"),
    ("translate", "ter", "translation TER", "lower"),
)


def stage_order(run_dir: Path, states: dict[str, dict]) -> list[str]:
    """Stages in pipeline order (from the resolved pipeline.yaml), then any others by start time."""
    order: list[str] = []
    resolved = run_dir / BOOK_DIR / "pipeline.yaml"
    if resolved.exists():
        order = [s for s in (read_yaml(resolved).get("stages") or {}) if s in states]
    rest = sorted((s for s in states if s not in order), key=lambda s: states[s].get("started", ""))
    return order + rest


def final_model(run_dir: str | Path) -> Path | None:
    """The model directory of the last finished stage that produced one (what to chat with)."""
    run_dir = Path(run_dir)
    states = read_all_states(run_dir)
    for name in reversed(stage_order(run_dir, states)):
        out = (states[name].get("outputs") or {}).get("model")
        if states[name].get("status") == "done" and out and out.get("exists"):
            return Path(out["path"])
    return None


def _fmt_s(s) -> str:
    from krllm.pipeline.display import fmt_s

    return fmt_s(s)


def _num(v, digits: int = 4) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{digits}g}" if abs(v) < 1e-3 and v != 0 else f"{v:.{digits}f}".rstrip("0").rstrip(".")
    return str(v)


def _eval_result(states: dict[str, dict], order: list[str]) -> tuple[str | None, dict | None]:
    for name in reversed(order):
        st = states[name]
        out = (st.get("outputs") or {}).get("eval")
        if st.get("kind") == "eval" and st.get("status") == "done" and out and Path(out["path"]).exists():
            return name, json.loads(Path(out["path"]).read_text(encoding="utf-8"))
    return None, None


def _labels(ev: dict, upstream: dict[str, str]) -> dict[str, str]:
    """Column name of each evaluated model: base / fine-tuned for two, else the stage that made it."""
    roles = list(ev.get("models", {}))
    if set(roles) <= {"base", "tuned"}:
        return {r: {"base": "base (pretrained)", "tuned": "fine-tuned"}[r] for r in roles}
    return {r: upstream.get(r, r) for r in roles}


def _pass_at_k_rows(ev: dict) -> list[tuple[str, str, str, str]]:
    """(section, key, label, better) rows for the pass@k values any model of eval.json has."""
    ks = sorted({key for m in (ev.get("math") or {}).values() for key in (m.get("pass_at_k") or {})
                 if key.startswith("pass@")}, key=lambda key: int(key[5:]))
    return [("math", key, f"math {key} (sampled)", "higher") for key in ks]


def _value(ev: dict, section: str, role: str, key: str):
    entry = (ev.get(section) or {}).get(role, {})
    return entry.get("pass_at_k", {}).get(key) if key.startswith("pass@") else entry.get(key)


def _metrics_table(ev: dict, labels: dict[str, str]) -> list[str]:
    roles = list(labels)
    head = "| metric | " + " | ".join(labels[r] for r in roles)
    lines = [head + (" | change |" if len(roles) == 2 else " |"), "|---" * (len(roles) + 1 + (len(roles) == 2)) + "|"]
    for section, key, label, better in (*METRIC_ROWS, *_pass_at_k_rows(ev)):
        vals = [_value(ev, section, r, key) for r in roles]
        if all(v is None for v in vals):
            continue
        digits = 2 if key in ("ppl", "bleu", "chrf", "ter") else 4
        cells = [f"{100 * v:.1f}% ({ev[section][r]['correct']}/{ev[section][r]['n']})" if key == "accuracy"
                 and v is not None else _num(v, digits) for r, v in zip(roles, vals)]
        row = f"| {label} | " + " | ".join(cells)
        if len(roles) == 2 and None not in vals:
            delta = vals[1] - vals[0]
            good = (delta < 0) if better == "lower" else (delta > 0)
            mark = "better" if good else ("same" if delta == 0 else "worse")
            pts = key == "accuracy" or key.startswith("pass@")
            shown = f"{100 * delta:.1f}" if pts else _num(delta, digits)
            row += f" | {'+' if delta >= 0 else ''}{shown}" \
                   f"{' pts' if pts else ''} ({mark}) |"
        else:
            row += " |"
        lines.append(row)
    return lines


def _training_rows(states: dict, order: list[str], run_dir: Path) -> list[str]:
    """Final train/val loss of each stage that logged metrics."""
    lines = []
    for name in order:
        recs = read_metrics(Path(states[name].get("stage_dir", run_dir / name)) / "metrics.jsonl")
        train = [r["loss"] for r in recs if r.get("split") == "train" and isinstance(r.get("loss"), (int, float))]
        val = [r["loss"] for r in recs if r.get("split") in ("val", "eval") and isinstance(r.get("loss"), (int, float))]
        if train or val:
            lines.append(f"| {name} | {_num(train[0]) if train else '—'} | {_num(train[-1]) if train else '—'} | "
                         f"{_num(val[0]) if val else '—'} | {_num(val[-1]) if val else '—'} | {len(train) + len(val)} |")
    if not lines:
        return []
    return ["| stage | first train loss | last train loss | first val loss | last val loss | records |",
            "|---|---|---|---|---|---|"] + lines


def _pct(m: dict) -> str:
    return f"{100 * m['accuracy']:.1f}% ({m['correct']}/{m['n']})"


def _math_track(ev: dict, upstream: dict[str, str], states: dict, order: list[str]) -> list[str]:
    """Held-out exact match stage by stage (pipeline order), with the change from the row before."""
    math = ev.get("math") or {}
    roles = [r for r in ev.get("models", {}) if r in math]
    if len(roles) <= 2:
        return []
    where = {s: i for i, s in enumerate(order)}
    roles.sort(key=lambda r: where.get(upstream.get(r, r), len(order)))  # unknown roles last, in eval order
    lines = ["## Math track", "", "Held-out exact match of every model, in pipeline order (greedy answers, the same "
             "problems for each):", "", "| stage | kind | exact match | change vs previous |", "|---|---|---|---|"]
    prev = None
    for r in roles:
        stage, m = upstream.get(r, r), math[r]
        delta = "—" if prev is None else f"{100 * (m['accuracy'] - prev):+.1f} pts"
        lines.append(f"| {stage} | {(states.get(stage) or {}).get('kind', r)} | {_pct(m)} | {delta} |")
        prev = m["accuracy"]
    first, last = math[roles[0]], math[roles[-1]]
    lines += ["", f"From {upstream.get(roles[0], roles[0])} to {upstream.get(roles[-1], roles[-1])}: "
              f"{100 * (last['accuracy'] - first['accuracy']):+.1f} pts.", ""]
    return lines


def _one_line(text: str, limit: int = 200) -> str:
    flat = " ⏎ ".join(ln.strip() for ln in (text or "").strip().splitlines() if ln.strip()).replace("`", "'")
    return flat[:limit] + ("…" if len(flat) > limit else "") if flat else "(empty)"


def _math_answers(ev: dict, labels: dict[str, str], k: int = 3) -> list[str]:
    """The first k held-out problems: every model's greedy answer and whether its final answer is right."""
    math = ev.get("math") or {}
    roles = [r for r in labels if (math.get(r) or {}).get("examples")]
    if not roles:
        return []
    lines = [f"## Math answers (greedy, first {k} held-out problems)", ""]
    for i, ex in enumerate(math[roles[0]]["examples"][:k], 1):
        lines += [f"**Problem {i}** (truth **{ex['truth']}**)", "", "```text", ex["question"], "```", ""]
        for r in roles:
            got = math[r]["examples"][i - 1] if i <= len(math[r]["examples"]) else {}
            mark = {True: " ✓ right", False: " ✗ wrong"}.get(got.get("correct"), "")  # absent in older eval.json
            lines.append(f"- *{labels[r]}*{mark}: `{_one_line(got.get('answer', ''))}`")
        lines.append("")
    return lines


def _translations(ev: dict, labels: dict[str, str]) -> list[str]:
    """The first held-out pairs: source, reference and every model's greedy translation (with sentence chrF)."""
    tr = ev.get("translate") or {}
    roles = [r for r in labels if (tr.get(r) or {}).get("examples")]
    if not roles:
        return []
    meta = (ev.get("data") or {}).get("translate") or {}
    k = meta.get("examples", 5)
    first = tr[roles[0]]
    lines = [f"## Sample translations ({meta.get('src', '?')} → {meta.get('tgt', '?')}, greedy, first {k} held-out pairs)",
             "", f"BLEU signature `{first['signatures']['bleu']}`; chrF `{first['signatures']['chrf']}`; "
             f"TER `{first['signatures']['ter']}`.", ""]
    for i, ex in enumerate(first["examples"][:k], 1):
        lines += [f"**Pair {i}**", "", f"- source: `{_one_line(ex['source'])}`",
                  f"- reference: `{_one_line(ex['reference'])}`"]
        for r in roles:
            got = tr[r]["examples"][i - 1] if i <= len(tr[r]["examples"]) else {}
            lines.append(f"- *{labels[r]}* (chrF {got.get('chrf', 0):.1f}): `{_one_line(got.get('hypothesis', ''))}`")
        lines.append("")
    return lines


def build_report(run_dir: str | Path) -> Path:
    """Write report.md, report.html and plots/ for a pipeline run directory; return report.md."""
    run_dir = Path(run_dir)
    states = read_all_states(run_dir)
    if not states:
        raise KrllmError(f"{run_dir}: no pipeline state found ({run_dir / BOOK_DIR / 'state'}); "
                         "is this a `krllm pipeline run` directory?")
    order = stage_order(run_dir, states)
    name = run_dir.name
    pipe_cfg = read_yaml(run_dir / BOOK_DIR / "pipeline.yaml") if (run_dir / BOOK_DIR / "pipeline.yaml").exists() else {}
    md: list[str] = [f"# Report card: {name}", ""]
    if pipe_cfg.get("description"):
        md += [pipe_cfg["description"], ""]
    md += [f"Generated {time.strftime('%Y-%m-%d %H:%M:%S %z')} from `{run_dir}`.", ""]

    # what ran
    md += ["## What ran", "", "| stage | kind | status | wall time | CPU time | peak RSS | tokens | tokens/s | notes |",
           "|---|---|---|---|---|---|---|---|---|"]
    total_wall, peak = 0.0, 0.0
    for s in order:
        st = states[s]
        if st.get("kind") == "report":
            continue  # this stage is the one writing the report: it has no result yet
        summ = st.get("summary") or {}
        total_wall += st.get("wall_s") or 0
        peak = max(peak, st.get("peak_rss_mb") or 0)
        attempts = st.get("attempts") or []
        notes = [summ.get("note")] if summ.get("note") else []
        if len(attempts) > 1:
            notes.append(f"{len(attempts)} attempts ({', '.join(a['mode'] + ':' + a['outcome'] for a in attempts)})")
        if st.get("error"):
            notes.append(str(st["error"]).splitlines()[0][:120])
        rss = st.get("peak_rss_mb")
        md.append(f"| {s} | {st.get('kind')} | {st.get('status')} | {_fmt_s(st.get('wall_s'))} | "
                  f"{_fmt_s(st.get('cpu_s'))} | "
                  f"{f'{rss:,.0f} MB' if rss else '—'} | {_num(summ.get('tokens'))} | "
                  f"{_num(summ.get('tokens_per_s'), 1)} | {'; '.join(notes)} |")
    cpus = [states[s].get("cpu_s") for s in order if states[s].get("kind") != "report"]
    cpu = _fmt_s(sum(cpus)) if cpus and all(c is not None for c in cpus) else "not recorded"
    md += ["", f"Total stage wall time **{_fmt_s(total_wall)}** (CPU time {cpu}, summed over cores and "
           f"worker processes); largest stage peak RSS **{peak:,.0f} MB** (each stage runs in its own process; "
           "peak RSS is the kernel's high-water mark of that process, or of its process tree sampled every 0.5 s).",
           ""]

    # model
    params = [(s, k, v) for s in order for k, v in (states[s].get("summary") or {}).items()
              if k in ("params", "trainable_params", "non_embedding_params") and v]
    eval_stage, ev = _eval_result(states, order)
    upstream = dict(states[eval_stage].get("upstream") or {}) if eval_stage else {}
    labels = _labels(ev, upstream) if ev else {}
    if ev:
        params += [(eval_stage, f"{role} model params", m.get("params")) for role, m in ev.get("models", {}).items()]
    if params:
        md += ["## Model", "", "| stage | count | value |", "|---|---|---|"]
        md += [f"| {s} | {k.replace('_', ' ')} | {_num(v)} |" for s, k, v in params]
        md.append("")

    # metrics
    md += ["## Final metrics", ""]
    if ev:
        md += _metrics_table(ev, labels) + [""]
        dm = ev.get("data", {})
        notes = []
        if "perplexity" in dm:
            notes.append(f"validation text: split `{dm['perplexity']['split']}` of `{dm['perplexity']['shards']}`")
        for k in ("npc", "math"):
            if k in dm:
                notes.append(f"{k}: {dm[k]['n']} held-out examples from `{dm[k]['data']}` "
                             f"({dm[k]['dropped_in_training']} dropped for appearing in training)")
        if "translate" in dm:
            notes.append(f"translation: {dm['translate']['n']} pairs {dm['translate']['src']} → "
                         f"{dm['translate']['tgt']} from `{dm['translate']['data']}`, greedy; BLEU and chrF 0-100 "
                         "(higher is better), TER edits per reference word × 100 (lower is better)")
        md += [f"- {n}" for n in notes] + [""]
    else:
        md += ["No finished eval stage yet.", ""]
    train_rows = _training_rows(states, order, run_dir)
    if train_rows:
        md += ["Training curves, first and last logged values:", ""] + train_rows + [""]

    if ev:
        md += _math_track(ev, upstream, states, order)

    # plots
    plot_lines = _plots(run_dir, states, order)
    if plot_lines:
        md += ["## Curves", ""] + plot_lines

    # samples
    if ev and ev.get("samples"):
        md += ["## Sample answers (greedy, fixed NPC prompts)", ""]
        for i, smp in enumerate(ev["samples"], 1):
            md += [f"**Prompt {i}**", "", "```text", smp["prompt"], "```", ""]
            for r in labels:
                md += [f"*{labels[r]}*:", "", "```text", smp.get(r) or "(empty)", "```", ""]
    if ev:
        md += _math_answers(ev, labels)
        md += _translations(ev, labels)

    md += _commands(run_dir, states, order)
    text = "\n".join(md).rstrip() + "\n"
    report = run_dir / "report.md"
    atomic_write_text(report, text)
    atomic_write_text(run_dir / "report.html", to_html(text, f"Report card: {name}"))
    return report


# stage kind -> its own curves: (metrics key, file suffix, what it is, y label, per-function reward lines)
KIND_PLOTS = {
    "grpo": (("reward", "reward", "reward", "mean reward of the sampled completions", True),
             ("kl", "kl", "KL to the reference model", "KL (nats/token)", False)),
    "dpo": (("rewards/margins", "margin", "reward margin (chosen - rejected)", "beta x log-ratio margin", False),
            ("rewards/accuracies", "reward_accuracy", "reward accuracy (chosen ranked above rejected)",
             "share of pairs", False)),
}


def _plots(run_dir: Path, states: dict, order: list[str]) -> list[str]:
    from krllm.pipeline.plots import plot_loss, plot_lr, plot_metric

    lines: list[str] = []
    with atomic_dir(run_dir / "plots") as tmp:
        for s in order:
            recs = read_metrics(Path(states[s].get("stage_dir", run_dir / s)) / "metrics.jsonl")
            if not recs:
                continue
            loss = plot_loss(recs, tmp / f"{s}_loss.png", f"{s}: loss")
            lr = plot_lr(recs, tmp / f"{s}_lr.png", f"{s}: learning rate")
            if loss:
                lines += [f"![{s} loss](plots/{loss.name})", ""]
            if lr:
                lines += [f"![{s} learning rate](plots/{lr.name})", ""]
            for key, suffix, what, ylabel, per_fn in KIND_PLOTS.get(states[s].get("kind"), ()):
                png = plot_metric(recs, key, tmp / f"{s}_{suffix}.png", f"{s}: {what}", ylabel, per_function=per_fn)
                if png:
                    lines += [f"![{s} {what}](plots/{png.name})", ""]
    return lines


def _commands(run_dir: Path, states: dict, order: list[str]) -> list[str]:
    lines = ["## Reproduce", ""]
    inv = run_dir / BOOK_DIR / "invocations.jsonl"
    last = None
    if inv.exists():
        for line in inv.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("command"):
                last = rec
    if last and last.get("command"):
        lines += ["The whole pipeline (finished stages are skipped; `--from STAGE` re-runs from a stage):", "",
                  "```bash", last["command"], "```", ""]
    per_stage = [(s, states[s]["command"]) for s in order if states[s].get("command")]
    if per_stage:
        lines += ["Each stage on its own (the exact config each ran with; `krllm pretrain` / `krllm sft` take "
                  "`--resume` to continue an interrupted run):", "", "```bash"]
        lines += [f"{c}    # {s}" for s, c in per_stage] + ["```", ""]
    lines += [f"Rebuild this report: `krllm report {run_dir}`", ""]
    model = final_model(run_dir)
    if model:
        lines += ["## Chat with it / serve it", "", "```bash", f"krllm chat {model}",
                  f"krllm serve {model} --port 8000   # OpenAI-compatible API at /v1, web chat at /", "```", ""]
    return lines


CSS = ("body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;line-height:1.45}"
       "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
       "pre{background:#f5f5f5;padding:8px;white-space:pre-wrap}img{max-width:100%}")


def to_html(markdown_text: str, title: str) -> str:
    """Markdown -> a standalone HTML page (markdown-it-py, which rich already depends on)."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark").enable("table").render(markdown_text)
    return (f"<!doctype html>\n<html lang=\"ko\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>\n{body}</body></html>\n")
