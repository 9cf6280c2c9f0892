"""An Ollama Modelfile beside a GGUF: `ollama create NAME -f DIR/Modelfile` then `ollama run NAME`.

    krllm export ollama runs/demo_ko/sft --out ollama/demo --type q8_0    # exports the GGUF too
    krllm export ollama demo.gguf --out ollama/demo                       # an existing GGUF (copied)

Ollama renders prompts with its own Go template, not the GGUF's Jinja one, so the Modelfile spells
out ChatML, the format every krllm tokenizer ships (checked: the GGUF's template must render exactly
krllm's ChatML, or the export stops rather than ship a model that is prompted wrongly). Generation
stops at `<|im_end|>` (and `<|endoftext|>`); the sampling defaults are the model's
generation_config.json values embedded in the GGUF (`general.sampling.*`), else krllm generate's.
No ollama binary is needed to write this.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from krllm.errors import KrllmError, UsageError

GGUF_NAME = "model.gguf"
# Go template: every message as ChatML, then the assistant header (= add_generation_prompt)
CHATML_TEMPLATE = (
    '{{- range .Messages }}<|im_start|>{{ .Role }}\n'
    '{{ .Content }}<|im_end|>\n'
    '{{ end }}<|im_start|>assistant\n'
)
STOPS = ("<|im_end|>", "<|endoftext|>")
# krllm generate's defaults (krllm/commands/generate.py), used when the model names none
DEFAULT_SAMPLING = {"temperature": 0.8, "top_p": 0.95}
_SAMPLING_KEYS = {"general.sampling.temp": "temperature", "general.sampling.top_p": "top_p",
                  "general.sampling.top_k": "top_k", "general.sampling.penalty_repeat": "repeat_penalty"}
MAX_NUM_CTX = 4096  # Ollama allocates the whole context up front; longer contexts are a user's choice


def read_gguf_metadata(path: Path) -> dict:
    """The key/value fields of a GGUF (tokens and merges left out)."""
    from krllm.export.gguf import require_gguf

    try:
        reader = require_gguf().GGUFReader(str(path))
    except (ValueError, OSError) as e:
        raise KrllmError(f"{path}: not a readable GGUF file ({e})") from None
    out = {}
    for key, f in reader.fields.items():
        if key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type"):
            continue
        out[key] = f.contents()
    return out


def check_chatml(template: str | None, source: str) -> None:
    """The GGUF's chat template must render like krllm's ChatML, or the Modelfile's TEMPLATE would be wrong."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from krllm.tokenizer.chat_template import render_chatml

    if not template:
        raise KrllmError(f"{source}: the GGUF has no tokenizer.chat_template, so its chat format is unknown; "
                         "export a model whose tokenizer has krllm's ChatML template")
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "안녕"},
                {"role": "assistant", "content": "네"}, {"role": "user", "content": "2+2?"}]
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    try:
        got = env.from_string(template).render(messages=messages, add_generation_prompt=True)
    except Exception as e:  # jinja2 raises many types for a template it cannot run
        raise KrllmError(f"{source}: the chat template does not render ({e})") from None
    if got != render_chatml(messages, add_generation_prompt=True):
        raise KrllmError(f"{source}: the chat template is not ChatML (<|im_start|>role ... <|im_end|>); the "
                         "Modelfile's TEMPLATE would prompt the model differently than training did")


def modelfile_text(gguf_name: str, metadata: dict) -> str:
    """The Modelfile for `gguf_name` (in the same directory) with the sampling and context of `metadata`."""
    sampling = {_SAMPLING_KEYS[k]: v for k, v in metadata.items() if k in _SAMPLING_KEYS} or dict(DEFAULT_SAMPLING)
    arch = metadata.get("general.architecture", "llama")
    num_ctx = min(int(metadata.get(f"{arch}.context_length", MAX_NUM_CTX)), MAX_NUM_CTX)
    lines = ["# written by krllm export ollama; ollama create NAME -f Modelfile", f"FROM ./{gguf_name}", "",
             f'TEMPLATE """{CHATML_TEMPLATE}"""', ""]
    lines += [f'PARAMETER stop "{s}"' for s in STOPS]
    lines += [f"PARAMETER {k} {round(float(v), 6) if k != 'top_k' else int(v)}" for k, v in sampling.items()]
    lines.append(f"PARAMETER num_ctx {num_ctx}")
    return "\n".join(lines) + "\n"


def ollama_name(out_dir: Path, name: str | None) -> str:
    """A model name Ollama accepts (lowercase letters, digits, - _ .), from --name or the directory name."""
    raw = name or out_dir.resolve().name
    clean = re.sub(r"[^a-z0-9._-]+", "-", raw.lower()).strip("-.") or "krllm-model"
    if name is not None and clean != name:
        raise UsageError(f"--name {name!r}: Ollama names use lowercase letters, digits, '-', '_' and '.' (try {clean!r})")
    return clean


def export_ollama(source: str | Path, out_dir: str | Path, out_type: str = "q8_0", base: str | Path | None = None,
                  name: str | None = None) -> tuple[Path, str]:
    """Write OUT/model.gguf (exported from a model, or copied from a .gguf) and OUT/Modelfile.

    Returns (Modelfile path, the `ollama create` command)."""
    from krllm.config import atomic_write_text
    from krllm.export.gguf import _check_out_type, export_gguf

    source, out_dir = Path(source), Path(out_dir)
    model_name = ollama_name(out_dir, name)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir} is a file; give a directory for model.gguf + Modelfile")
    target = out_dir / GGUF_NAME
    if source.is_file():
        if source.suffix != ".gguf":
            raise UsageError(f"{source}: give a .gguf file or a model / adapter / run directory")
        check_chatml(read_gguf_metadata(source).get("tokenizer.chat_template"), str(source))
        out_dir.mkdir(parents=True, exist_ok=True)
        if source.resolve() != target.resolve():
            tmp = target.with_name(f".{GGUF_NAME}.tmp")
            shutil.copyfile(source, tmp)
            tmp.replace(target)
    else:
        _check_out_type(out_type)
        from krllm.export.gguf import plan_export
        from krllm.export.gguf_vocab import gguf_chat_template
        from krllm.model.load import load_tokenizer

        plan = plan_export(source, base)  # fail on the template before the slow export
        template = getattr(load_tokenizer(plan.tokenizer_dir), "chat_template", None)
        check_chatml(gguf_chat_template(template), str(plan.tokenizer_dir))
        export_gguf(source, target, out_type, base=base, name=model_name)
    metadata = read_gguf_metadata(target)  # its template was checked above, before the copy / export
    modelfile = out_dir / "Modelfile"
    atomic_write_text(modelfile, modelfile_text(GGUF_NAME, metadata))
    return modelfile, f"ollama create {model_name} -f {modelfile}"
