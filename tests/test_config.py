"""Config machinery: strict keys, overrides, every problem reported at once with its key path."""

import pytest
import yaml
from pydantic import field_validator, model_validator

from krllm.config import ConfigError, StrictModel, apply_overrides, load_config, write_resolved


class Train(StrictModel):
    lr: float = 1e-3
    steps: int = 10

    @field_validator("lr")
    @classmethod
    def _positive(cls, v):
        if v <= 0:
            raise ValueError("must be > 0; try 3e-4")
        return v


class Model(StrictModel):
    hidden: int = 64
    heads: int = 4

    @model_validator(mode="after")
    def _divisible(self):
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        return self


class Cfg(StrictModel):
    name: str = "run"
    train: Train = Train()
    model: Model = Model()


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def test_defaults_and_overrides(tmp_path):
    p = write(tmp_path, "train:\n  lr: 0.01\n")
    cfg = load_config(p, Cfg, ["train.steps=5", "model.hidden=128", "train.lr=3e-4", "name=한국어"])
    assert cfg.train.lr == pytest.approx(3e-4) and cfg.train.steps == 5
    assert cfg.model.hidden == 128 and cfg.name == "한국어"


def test_all_problems_reported_at_once_with_paths(tmp_path):
    p = write(tmp_path, "train:\n  lr: -1\n  stepz: 3\nmodel:\n  hidden: 65\n  heads: x\n")
    with pytest.raises(ConfigError) as e:
        load_config(p, Cfg)
    msg = str(e.value)
    assert str(p) in msg
    assert "train.lr: must be > 0; try 3e-4 (got -1)" in msg
    assert "train.stepz: unknown key" in msg
    assert "model.heads:" in msg and "'x'" in msg
    assert len(e.value.problems) == 3  # the divisibility check runs once fields are valid


def test_cross_field_check_names_section(tmp_path):
    p = write(tmp_path, "model:\n  hidden: 65\n  heads: 4\n")
    with pytest.raises(ConfigError) as e:
        load_config(p, Cfg)
    assert "model: hidden (65) must be divisible by heads (4)" in str(e.value)


def test_yaml_syntax_error_names_line(tmp_path):
    p = write(tmp_path, "train:\n  lr: [1, 2\nname: x\n")
    with pytest.raises(ConfigError) as e:
        load_config(p, Cfg)
    assert "line " in str(e.value) and str(p) in str(e.value)


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml", Cfg)
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path, "- a\n- b\n"), Cfg)


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_overrides({}, ["train.lr"])


def test_resolved_config_roundtrips(tmp_path):
    cfg = load_config(None, Cfg, ["train.steps=7"])
    out = tmp_path / "run" / "config.yaml"
    write_resolved(cfg, out)
    data = yaml.safe_load(out.read_text(encoding="utf-8"))
    assert data == {"name": "run", "train": {"lr": 1e-3, "steps": 7}, "model": {"hidden": 64, "heads": 4}}
    assert load_config(out, Cfg) == cfg


def test_override_values_parse_like_yaml_scalars_but_keep_odd_strings():
    from krllm.config import parse_override

    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    assert parse_override("a={x: 1}") == (["a"], {"x": 1})
    assert parse_override("a=null") == (["a"], None)
    assert parse_override("a=true") == (["a"], True)
    for raw in ("?", "!", "k: v", "안녕하세요?"):
        assert parse_override(f"a={raw}") == (["a"], raw)


# ---------------------------------------------------------------- hardening (issue 15, item 11)

def test_duplicate_yaml_key_is_an_error_naming_key_and_both_lines(tmp_path):
    p = write(tmp_path, "name: a\ntrain:\n  lr: 0.1\n  steps: 3\n  lr: 0.2\n")
    with pytest.raises(ConfigError) as e:
        load_config(p, Cfg)
    msg = str(e.value)
    assert str(p) in msg and "'lr'" in msg and "line 5" in msg and "line 3" in msg
    top = write(tmp_path, "name: a\nname: b\n")
    with pytest.raises(ConfigError, match=r"line 2: key 'name' is given twice \(first on line 1\)"):
        load_config(top, Cfg)


def test_same_key_in_different_mappings_and_merge_keys_are_fine(tmp_path):
    p = write(tmp_path, "base: &b {lr: 0.5, steps: 2}\ntrain:\n  <<: *b\n  lr: 0.25\nmodel:\n  hidden: 64\n")
    from krllm.config import read_yaml

    assert read_yaml(p)["train"] == {"lr": 0.25, "steps": 2}
    with pytest.raises(ConfigError, match="given twice"):
        apply_overrides({}, ["train={lr: 1, lr: 2}"])


@pytest.mark.parametrize("value", ["inf", ".inf", "-inf", "nan", ".nan", "1e999"])
def test_non_finite_floats_are_rejected(tmp_path, value):
    with pytest.raises(ConfigError, match="train.lr:.*finite"):
        load_config(None, Cfg, [f"train.lr={value}"])
    with pytest.raises(ConfigError, match="train.lr:.*finite"):
        load_config(write(tmp_path, f"train:\n  lr: {value}\n"), Cfg)


def test_real_configs_reject_infinite_lr():
    from krllm.train.pretrain_config import PretrainConfig
    from krllm.train.sft_config import SFTRunConfig

    with pytest.raises(ConfigError, match="train.lr"):
        load_config(None, SFTRunConfig, ["base_model=x", "train.lr=inf"])
    with pytest.raises(ConfigError, match="train.lr"):
        load_config(None, PretrainConfig, ["data.shards=d", "train.lr=inf"])


@pytest.mark.parametrize("name", ["../x", "../../x", "a/b", ".hidden", "", "a\\b", "/abs"])
def test_run_names_that_leave_the_output_directory_are_rejected(name):
    from krllm.train.classify import ClassifyRunConfig
    from krllm.train.pretrain_config import PretrainConfig
    from krllm.train.sft_config import SFTRunConfig

    for schema, key, extra in ((PretrainConfig, "run.name", ["data.shards=d", "train.max_steps=1"]),
                               (SFTRunConfig, "name", ["base_model=x"]),
                               (ClassifyRunConfig, "name", ["base_model=x"])):
        with pytest.raises(ConfigError) as e:
            load_config(None, schema, [*extra, f"{key}={name}"])
        assert f"{key}: must be a plain directory name" in str(e.value)
    assert load_config(None, PretrainConfig, ["data.shards=d", "train.max_steps=1", "run.name=한국어_run-2"]).run.name == "한국어_run-2"


def test_config_path_that_is_a_directory_says_so(tmp_path):
    with pytest.raises(ConfigError, match="is a directory") as e:
        load_config(tmp_path, Cfg)
    assert "not found" not in str(e.value)


def test_mapping_override_merges_into_the_section(tmp_path):
    p = write(tmp_path, "train:\n  lr: 0.5\n  steps: 3\n")
    cfg = load_config(p, Cfg, ["train={lr: 0.25}"])
    assert cfg.train.lr == 0.25 and cfg.train.steps == 3  # steps kept from the file, not reset to 10
    assert apply_overrides({"a": {"b": {"c": 1, "d": 2}}}, ["a={b: {c: 5}}"]) == {"a": {"b": {"c": 5, "d": 2}}}
    assert apply_overrides({"a": {"b": 1}}, ["a={}"]) == {"a": {}}  # `{}` still clears a mapping
    assert apply_overrides({"a": {"b": 1}}, ["a=[1]"]) == {"a": [1]}
