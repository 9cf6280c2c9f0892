"""Translation eval: greedy translations of parallel text, scored with sacrebleu (BLEU, chrF, TER).

    krllm eval translate runs/tr/sft/merged --data builtin:ko-en-help:heldout --src ko --tgt en --n 200
    krllm eval translate http://127.0.0.1:8000/v1 --data my_pairs.jsonl --src ko --tgt en

Pairs: a JSONL file with one object a line holding the two language codes as keys ({"ko": ..., "en":
...}; other key names with --src-key / --tgt-key; an opus-style {"translation": {"ko": ..., "en": ...}}
works too), `builtin:ko-en-help[:train|heldout]` (LibreOffice help, krllm.data.sets.help_corpus;
default split heldout) or a Hub dataset `hf:NAME[:CONFIG][@SPLIT]` such as hf:Helsinki-NLP/opus-100:en-ko@test
(online). Every row is checked before any decoding; bad rows are reported together as file:line: why.

Prompts: the user turn of the SFT records (`다음 문장을 영어로 번역하세요.\\n\\n<ko>` for ko->en, the
one `builtin:ko-en-help` trains on), through the model's chat template; a tokenizer without one gets
the same text as a plain completion prompt and only the first line of its continuation is kept.
Decoding is greedy through krllm's engine (batched, the code `krllm serve` runs), or through a
served model's OpenAI-compatible /v1/chat/completions (temperature 0, requests in parallel so the
server batches them).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from urllib import error as urlerror
from urllib import request as urlrequest

from krllm.errors import DataError, KrllmError, UsageError
from krllm.eval.text_metrics import corpus_scores, one_line, sentence_chrf

LANGS = {"ko": ("Korean", "한국어"), "en": ("English", "영어"), "ja": ("Japanese", "일본어"),
         "zh": ("Chinese", "중국어"), "fr": ("French", "프랑스어"), "de": ("German", "독일어"),
         "es": ("Spanish", "스페인어")}


def default_template(src: str, tgt: str) -> str:
    """The instruction of a translation prompt, `{text}` standing for the source: Korean when either side is
    Korean (ko->en is exactly builtin:ko-en-help's SFT user turn), English otherwise."""
    from krllm.data.sets.help_corpus import TRANSLATE_KO_EN

    if (src, tgt) == ("ko", "en"):
        return TRANSLATE_KO_EN + "\n\n{text}"
    tgt_ko = LANGS.get(tgt, (tgt, tgt))[1]
    if "ko" in (src, tgt):
        return f"다음 문장을 {tgt_ko}로 번역하세요.\n\n{{text}}"
    return f"Translate the following {LANGS.get(src, (src,))[0]} text into {LANGS.get(tgt, (tgt,))[0]}.\n\n{{text}}"


def render_prompt(template: str, text: str) -> str:
    if "{text}" not in template:
        raise UsageError(f"translation prompt template {template!r} has no {{text}} placeholder for the source")
    return template.replace("{text}", text)


# ---------------------------------------------------------------- pairs

def _pair(row, src_key: str, tgt_key: str) -> dict:
    """{"src", "ref"} of one row, or ValueError saying what is wrong with it."""
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    if isinstance(row.get("translation"), dict) and src_key not in row:
        row = row["translation"]
    out = {}
    for role, key in (("src", src_key), ("ref", tgt_key)):
        if key not in row:
            raise ValueError(f"missing key {key!r} (keys: {', '.join(map(str, row)) or 'none'})")
        value = row[key]
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"key {key!r}: expected non-empty text, got {value!r:.60}")
        out[role] = value
    return out


def _validated(rows, src_key: str, tgt_key: str, source: str) -> list[dict]:
    from krllm.data.sets.records import convert_rows

    pairs = convert_rows(rows, lambda row: _pair(row, src_key, tgt_key), "translation pair(s)", source,
                         errors=(ValueError,))
    if not pairs:
        raise DataError(f"{source}: no translation pairs (the file is empty)")
    return pairs


def load_pairs(spec: str, src: str, tgt: str, n: int | None = None, seed: int = 0, src_key: str | None = None,
               tgt_key: str | None = None) -> list[dict]:
    """Validated {"src", "ref"} pairs of a JSONL file, builtin:ko-en-help[:split] or hf:... (the first n;
    a seeded sample of n for the built-in set)."""
    src_key, tgt_key = src_key or src, tgt_key or tgt
    spec = str(spec)
    if spec.startswith("builtin:"):
        name, _, split = spec.removeprefix("builtin:").partition(":")
        if name != "ko-en-help":
            raise DataError(f"{spec}: the built-in translation set is builtin:ko-en-help[:train|heldout]")
        if {src_key, tgt_key} != {"ko", "en"}:
            raise UsageError(f"{spec} holds Korean and English ('ko', 'en'); got --src {src_key} --tgt {tgt_key}")
        from krllm.data.sets.help_corpus import sample_pairs

        rows = sample_pairs(split or "heldout", n, seed)
        return _validated(((f"{spec} pair {r.get('id', i)}", r) for i, r in enumerate(rows)), src_key, tgt_key, spec)
    from krllm.data.sets.hub import hub_rows, is_hub_spec

    if is_hub_spec(spec):
        return _validated(((f"{spec} row {i}", r) for i, r in hub_rows(spec, n)), src_key, tgt_key, spec)
    from krllm.data.sources import iter_jsonl

    pairs = _validated(((f"{spec}:{line}", r) for line, r in iter_jsonl(spec)), src_key, tgt_key, spec)
    return pairs[:n] if n is not None else pairs


# ---------------------------------------------------------------- decoding

def prompt_ids(lm, prompt: str, system: str | None = None) -> list[int]:
    """A chat prompt through the tokenizer's template when it has one, else the text (+ a newline) as is."""
    from krllm.eval.generate import chat_prompt_ids

    if lm.has_chat_template:
        return chat_prompt_ids(lm.tokenizer, prompt, system)
    return list(lm.tokenizer.encode(prompt + "\n"))


def translate_local(lm, prompts: list[str], max_new_tokens: int = 128, batch_size: int = 16,
                    system: str | None = None) -> list[dict]:
    """Greedy translations by krllm's engine: [{"text", "tokens", "finish"}] in order."""
    from krllm.eval.generate import decode_ids
    from krllm.infer.sampling import SamplingParams

    ids = [prompt_ids(lm, p, system) for p in prompts]
    got = decode_ids(lm, ids, [SamplingParams(temperature=0)] * len(ids), max_new_tokens, batch_size)
    chat = lm.has_chat_template
    return [{"text": g["answer"] if chat else (g["answer"].splitlines() or [""])[0], "tokens": g["tokens"],
             "prompt_tokens": len(i), "finish": g["finish"]} for g, i in zip(got, ids)]


def _post(url: str, body: dict | None, api_key: str | None, timeout: float) -> dict:
    data = None if body is None else json.dumps(body).encode("utf-8")
    req = urlrequest.Request(url, data=data, method="GET" if body is None else "POST",
                             headers={"Content-Type": "application/json",
                                      **({"Authorization": f"Bearer {api_key}"} if api_key else {})})
    try:
        with urlrequest.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urlerror.HTTPError as e:
        raise KrllmError(f"{url}: HTTP {e.code}: {e.read()[:300].decode('utf-8', 'replace')}") from None
    except (urlerror.URLError, TimeoutError, ConnectionError) as e:
        raise KrllmError(f"{url}: cannot reach the server ({getattr(e, 'reason', e)}); is `krllm serve` running?"
                         ) from None


def served_model(url: str, api_key: str | None = None) -> str:
    """The id of the first model the server lists at /v1/models."""
    models = _post(url.rstrip("/") + "/models", None, api_key, 30).get("data") or []
    if not models:
        raise KrllmError(f"{url}/models lists no model")
    return models[0]["id"]


def translate_served(url: str, prompts: list[str], max_new_tokens: int = 128, model: str | None = None,
                     api_key: str | None = None, parallel: int = 8, system: str | None = None,
                     timeout: float = 600) -> list[dict]:
    """Greedy translations from an OpenAI-compatible server (/v1/chat/completions, temperature 0)."""
    base = url.rstrip("/")
    model = model or served_model(base, api_key)

    def one(prompt: str) -> dict:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        out = _post(base + "/chat/completions", {"model": model, "messages": messages, "temperature": 0,
                                                  "max_tokens": max_new_tokens}, api_key, timeout)
        choice, usage = out["choices"][0], out.get("usage") or {}
        return {"text": (choice["message"].get("content") or "").strip(), "tokens": usage.get("completion_tokens"),
                "prompt_tokens": usage.get("prompt_tokens"), "finish": choice.get("finish_reason")}

    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        return list(pool.map(one, prompts))


# ---------------------------------------------------------------- scoring

def score_translations(pairs: list[dict], outputs: list[dict], tgt: str, tokenize: str | None = None,
                       n_examples: int | None = None) -> dict:
    """{"bleu", "chrf", "ter" (scores), "signatures", "bleu_detail", "n", "examples"} for one model."""
    hyps = [one_line(o["text"]) for o in outputs]
    refs = [p["ref"] for p in pairs]
    scores = corpus_scores(hyps, refs, tgt_lang=tgt, tokenize=tokenize)
    examples = [{"source": p["src"], "reference": p["ref"], "hypothesis": h, "chrf": round(sentence_chrf(h, p["ref"]), 2)}
                for p, h in zip(pairs, hyps)]
    b = scores["bleu"]
    return {"bleu": b["score"], "chrf": scores["chrf"]["score"], "ter": scores["ter"]["score"], "n": len(pairs),
            "signatures": {k: v["signature"] for k, v in scores.items()},
            "bleu_detail": {k: b[k] for k in ("precisions", "bp", "sys_len", "ref_len")},
            "empty_hypotheses": sum(not h for h in hyps),
            "examples": examples if n_examples is None else examples[:n_examples]}


def samples_markdown(result: dict, roles: list[str], k: int = 10) -> str:
    """The first k sources with their reference and every model's translation."""
    tr = result["translate"]
    lines = [f"# Translations ({result['data']['src']} -> {result['data']['tgt']}, greedy)", ""]
    lines += ["| model | BLEU | chrF | TER |", "|---|---|---|---|"]
    lines += [f"| {r} | {tr[r]['bleu']:.2f} | {tr[r]['chrf']:.2f} | {tr[r]['ter']:.2f} |" for r in roles]
    lines += ["", f"Signatures: BLEU `{tr[roles[0]]['signatures']['bleu']}`, chrF `{tr[roles[0]]['signatures']['chrf']}`, "
              f"TER `{tr[roles[0]]['signatures']['ter']}`", ""]
    for i, ex in enumerate(tr[roles[0]]["examples"][:k], 1):
        lines += [f"## {i}", "", f"- source: {ex['source']}", f"- reference: {ex['reference']}"]
        lines += [f"- {r} (chrF {tr[r]['examples'][i - 1]['chrf']:.1f}): {tr[r]['examples'][i - 1]['hypothesis'] or '(empty)'}"
                  for r in roles]
        lines.append("")
    return "\n".join(lines)


def is_url(target: str) -> bool:
    return str(target).startswith(("http://", "https://"))


def write_outputs(out_dir, result: dict, roles: list[str]) -> None:
    """eval.json, samples.md, and per model samples.jsonl + src/ref/hyp text files (one segment a line, so
    `sacrebleu ref.txt -i hyp.txt -m bleu chrf ter` reproduces the scores), in one atomic directory."""
    from krllm.runs import atomic_dir, write_json

    with atomic_dir(out_dir) as tmp:
        write_json(tmp / "eval.json", result)
        (tmp / "samples.md").write_text(samples_markdown(result, roles), encoding="utf-8")
        first = result["translate"][roles[0]]["examples"]
        (tmp / "src.txt").write_text("".join(one_line(e["source"]) + "\n" for e in first), encoding="utf-8")
        (tmp / "ref.txt").write_text("".join(one_line(e["reference"]) + "\n" for e in first), encoding="utf-8")
        for role in roles:
            examples = result["translate"][role]["examples"]
            suffix = "" if len(roles) == 1 else f".{role}"
            (tmp / f"hyp{suffix}.txt").write_text("".join(e["hypothesis"] + "\n" for e in examples), encoding="utf-8")
            (tmp / f"samples{suffix}.jsonl").write_text(
                "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in examples), encoding="utf-8")


def run_translation(target: str, data: str, src: str, tgt: str, out_dir, n: int | None = None, seed: int = 0,
                    src_key: str | None = None, tgt_key: str | None = None, template: str | None = None,
                    max_new_tokens: int = 128, batch_size: int = 16, tokenize: str | None = None,
                    system: str | None = None, device: str = "cpu", dtype: str = "fp32",
                    api_key: str | None = None, served_name: str | None = None) -> dict:
    """Translate the pairs with one model (a directory or a served /v1 URL), score, write out_dir; return eval.json."""
    import time

    pairs = load_pairs(data, src, tgt, n=n, seed=seed, src_key=src_key, tgt_key=tgt_key)  # before any model loads
    template = template or default_template(src, tgt)
    prompts = [render_prompt(template, p["src"]) for p in pairs]
    t0 = time.time()
    if is_url(target):
        outputs = translate_served(target, prompts, max_new_tokens, model=served_name, api_key=api_key,
                                   parallel=batch_size, system=system)
        model = {"url": target, "model": served_name or served_model(target, api_key)}
    else:
        from krllm.device import pick_device
        from krllm.model.load import load

        lm = load(target, device=pick_device(device), dtype=dtype)
        outputs = translate_local(lm, prompts, max_new_tokens, batch_size, system)
        model = {"path": str(target), "source": lm.source, "params": lm.num_parameters,
                 "chat_template": lm.has_chat_template}
    wall = time.time() - t0
    scored = score_translations(pairs, outputs, tgt, tokenize)
    tokens = sum(o["tokens"] or 0 for o in outputs)
    scored.update(wall_s=round(wall, 2), tokens=tokens, tokens_per_s=round(tokens / wall, 1) if wall > 0 else None)
    result = {"models": {"model": model}, "translate": {"model": scored},
              "data": {"data": str(data), "src": src, "tgt": tgt, "n": len(pairs), "seed": seed,
                       "template": template, "max_new_tokens": max_new_tokens}}
    write_outputs(out_dir, result, ["model"])
    return result
