"""krllm export ollama: model.gguf + a Modelfile whose ChatML TEMPLATE renders our conversations exactly as
krllm's chat template does, with the stop tokens and the model's sampling defaults (no ollama binary needed)."""

import json
import re

import pytest
from export_tiny import make_model, make_tokenizer

from krllm.errors import KrllmError, UsageError

gguf = pytest.importorskip("gguf", reason="the gguf package is in krllm's `export` extra (pip install -e '.[export]')")

from krllm.export.ollama import CHATML_TEMPLATE, export_ollama, modelfile_text  # noqa: E402

MESSAGES = [{"role": "system", "content": "당신은 게임 속 대장장이입니다."},
            {"role": "user", "content": "검 얼마예요?"},
            {"role": "assistant", "content": "50 골드라네."},
            {"role": "user", "content": "깎아 주세요 🙏"}]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("ollama")
    tok = make_tokenizer(root / "tok", "llama3", "byte", vocab_size=600)
    return make_model(root / "model", tok)


def parse_modelfile(text: str) -> dict:
    """FROM, TEMPLATE (between triple quotes) and PARAMETER lines of a Modelfile."""
    template = re.search(r'TEMPLATE """(.*?)"""', text, re.S)
    params: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.startswith("PARAMETER "):
            _, key, value = line.split(" ", 2)
            params.setdefault(key, []).append(value)
    return {"from": re.findall(r"^FROM (.+)$", text, re.M), "template": template and template.group(1),
            "params": params}


def render_go_chatml(template: str, messages: list[dict]) -> str:
    """What Ollama's `{{- range .Messages }}BODY{{ end }}TAIL` renders: BODY per message with .Role/.Content."""
    m = re.fullmatch(r"\{\{- range \.Messages \}\}(.*)\{\{ end \}\}(.*)", template, re.S)
    assert m, template
    body, tail = m.groups()
    return "".join(body.replace("{{ .Role }}", x["role"]).replace("{{ .Content }}", x["content"])
                   for x in messages) + tail


def test_modelfile_from_a_model_dir(model_dir, tmp_path, capsys):
    from krllm.cli import main
    from krllm.tokenizer.chat_template import render_chatml

    with pytest.raises(SystemExit) as e:
        main(["export", "ollama", str(model_dir), "--out", str(tmp_path / "demo-ko"), "--type", "q8_0"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert f"next: ollama create demo-ko -f {tmp_path / 'demo-ko' / 'Modelfile'}" in out
    text = (tmp_path / "demo-ko" / "Modelfile").read_text()
    mf = parse_modelfile(text)
    assert mf["from"] == ["./model.gguf"] and (tmp_path / "demo-ko" / "model.gguf").is_file()
    assert mf["template"] == CHATML_TEMPLATE
    assert render_go_chatml(mf["template"], MESSAGES) == render_chatml(MESSAGES, add_generation_prompt=True)
    assert mf["params"]["stop"] == ['"<|im_end|>"', '"<|endoftext|>"']
    assert mf["params"]["temperature"] == ["0.8"] and mf["params"]["top_p"] == ["0.95"]  # krllm generate's
    assert mf["params"]["num_ctx"] == ["256"]  # the model's context (<= 4096)
    reader = gguf.GGUFReader(str(tmp_path / "demo-ko" / "model.gguf"))
    assert reader.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q8_0


def test_sampling_defaults_come_from_generation_config(model_dir, tmp_path):
    import shutil

    d = tmp_path / "m"
    shutil.copytree(model_dir, d)
    gen = json.loads((d / "generation_config.json").read_text())
    gen.update(temperature=0.6, top_p=0.9, top_k=40, repetition_penalty=1.1)
    (d / "generation_config.json").write_text(json.dumps(gen))
    modelfile, command = export_ollama(d, tmp_path / "out", "f16", name="npc")
    params = parse_modelfile(modelfile.read_text())["params"]
    assert params["temperature"] == ["0.6"] and params["top_p"] == ["0.9"] and params["top_k"] == ["40"]
    assert params["repeat_penalty"] == ["1.1"]
    assert command == f"ollama create npc -f {modelfile}"
    # the same defaults travel inside the GGUF: a Modelfile made from the .gguf alone says the same
    again, _ = export_ollama(tmp_path / "out" / "model.gguf", tmp_path / "again", name="npc")
    assert parse_modelfile(again.read_text())["params"] == params
    assert (tmp_path / "again" / "model.gguf").read_bytes() == (tmp_path / "out" / "model.gguf").read_bytes()


def test_modelfile_text_is_stable():
    text = modelfile_text("model.gguf", {"general.architecture": "qwen2", "qwen2.context_length": 32768,
                                         "general.sampling.temp": 0.7})
    assert text.splitlines()[1:3] == ["FROM ./model.gguf", ""]
    assert "PARAMETER temperature 0.7\n" in text and "PARAMETER num_ctx 4096\n" in text


def test_non_chatml_template_and_bad_names_refused(model_dir, tmp_path):
    import shutil

    d = tmp_path / "m"
    shutil.copytree(model_dir, d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    llama3 = ("{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}"
              "<|eot_id|>{% endfor %}")
    cfg["chat_template"] = llama3
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    (d / "chat_template.jinja").write_text(llama3)
    with pytest.raises(KrllmError, match="not ChatML"):
        export_ollama(d, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(UsageError, match="lowercase"):
        export_ollama(model_dir, tmp_path / "out", name="My Model")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UsageError, match=".gguf file or a model"):
        export_ollama(tmp_path / "notes.txt", tmp_path / "out")
