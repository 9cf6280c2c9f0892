"""Every YAML under configs/ parses against the schema its directory implies; unknown places fail.

One catch-all, so nobody ships an unchecked config: a new directory (configs/dpo/) or a file that is
not YAML fails here until a schema is added to SCHEMAS. What a file must *contain* (names, chosen
presets, wiring) is checked by the stage's own tests: test_pipeline_configs, test_sft_train,
test_tokenizer_train, test_model_config, test_pretrain_units, test_infer_cli, test_data_prepare.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
import yaml

from krllm.config import load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


def _model(path: Path):
    from krllm.model.config import model_config_from

    return model_config_from(path)


def _schema(module: str, name: str) -> Callable[[Path], object]:
    def load(path: Path):
        import importlib

        return load_config(path, getattr(importlib.import_module(module), name))
    load.__qualname__ = f"{module}:{name}"
    return load


def _pipeline(path: Path):
    """The pipeline schema, then every stage config against its own schema (Pipeline wires and validates)."""
    from krllm.pipeline.config import load_pipeline
    from krllm.pipeline.runner import Pipeline

    return Pipeline(load_pipeline(path, ["runs_dir=/nonexistent/never-written"]), config_path=path)


ACCELERATE_KEYS = {"compute_environment", "distributed_type", "mixed_precision", "num_machines", "num_processes"}


def _accelerate(path: Path):
    """accelerate's own loader is the schema; plus the keys `accelerate launch` needs from the file."""
    from accelerate.commands.config.config_args import load_config_from_file

    missing = ACCELERATE_KEYS - set(yaml.safe_load(path.read_text(encoding="utf-8")))
    assert not missing, f"{path}: missing accelerate keys {sorted(missing)}"
    return load_config_from_file(str(path))


SCHEMAS: dict[str, Callable[[Path], object]] = {  # configs/<dir>/ -> how a file there is loaded and checked
    "model": _model,
    "tokenizer": _schema("krllm.tokenizer.train", "TokenizerTrainConfig"),
    "data": _schema("krllm.data.prepare.config", "PrepareConfig"),
    "pretrain": _schema("krllm.train.pretrain_config", "PretrainConfig"),
    "sft": _schema("krllm.train.sft_config", "SFTRunConfig"),
    "dpo": _schema("krllm.train.dpo_config", "DPORunConfig"),
    "grpo": _schema("krllm.train.grpo_config", "GRPORunConfig"),
    "classify": _schema("krllm.train.classify", "ClassifyRunConfig"),
    "eval": _schema("krllm.eval.run", "EvalConfig"),
    "serve": _schema("krllm.infer.config", "ServeConfig"),
    "pipelines": _pipeline,
    "accelerate": _accelerate,
}

FILES = sorted(p for p in CONFIGS.rglob("*") if p.is_file())


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(ROOT)  # configs name other configs relative to the repository (pipelines -> stages)


def test_every_config_lives_where_a_schema_knows_it():
    assert FILES, "configs/ is empty"
    bad = []
    for p in FILES:
        rel = p.relative_to(CONFIGS)
        if len(rel.parts) != 2 or rel.parts[0] not in SCHEMAS:
            bad.append(f"{rel}: not in a known directory ({', '.join(SCHEMAS)}); add its schema to "
                       "SCHEMAS in tests/test_configs_parse.py")
        elif p.suffix != ".yaml":
            bad.append(f"{rel}: only .yaml files belong in configs/")
    assert not bad, "\n".join(bad)


def test_every_known_directory_has_a_config():
    assert sorted(SCHEMAS) == sorted({p.relative_to(CONFIGS).parts[0] for p in FILES})


@pytest.mark.parametrize("path", [p for p in FILES if p.relative_to(CONFIGS).parts[0] in SCHEMAS],
                         ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_parses_against_its_schema(path):
    cfg = SCHEMAS[path.relative_to(CONFIGS).parts[0]](path)
    assert cfg is not None


def test_the_catch_all_rejects_a_bad_key(tmp_path):
    """The loaders above are strict: an unknown key in any schema'd file is an error, not ignored."""
    from krllm.config import ConfigError

    for folder, body in (("eval", "mathh: {n: 3}\n"), ("model", "preset: tiny\nhidden_sizee: 64\n"),
                         ("serve", "engine: {max_bach: 2}\n")):
        path = tmp_path / f"{folder}.yaml"
        path.write_text(body, encoding="utf-8")
        with pytest.raises(ConfigError, match="unknown key"):
            SCHEMAS[folder](path)
