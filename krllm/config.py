"""Config machinery shared by every stage: strict pydantic models, YAML + `--set key=value`
overrides, and error messages that list every problem at once with its key path.

Each stage keeps its own schema next to its code (e.g. `krllm.model.config.ModelConfig`) and
subclasses `StrictModel`; this module only knows how to load, override, validate and write them.

    cfg = load_config("configs/pretrain/tiny_ko.yaml", PretrainConfig, ["train.lr=3e-4"])
    write_resolved(cfg, run_dir / "config.yaml")
"""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any, Iterable, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

T = TypeVar("T", bound=BaseModel)
UMASK = os.umask(0)  # read once at import: reading it means setting it, which races with other threads
os.umask(UMASK)
"""The process umask: outputs get the mode a plain open() would give (0666 / 0777 minus this)."""


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, assignments are re-validated, and floats
    must be finite (`lr: inf` or `.nan` is a typo that would otherwise train on NaN weights)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(),
                              allow_inf_nan=False)


def check_run_name(value: str) -> str:
    """A run name becomes one directory under the output directory: `../x` or `a/b` would write elsewhere."""
    if not value or any(c in value for c in "/\\\0") or value.startswith("."):
        raise ValueError("must be a plain directory name (no '/' or '\\', not starting with '.')")
    return value


RunName = Annotated[str, AfterValidator(check_run_name)]


class _DuplicateKey(Exception):
    """Raised by the YAML loader; read_yaml turns it into a ConfigError."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue  # `<<: *anchor` merges may be overridden; complex keys are not ours
                key = self.construct_object(key_node)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise _DuplicateKey(f"line {line}: key {key!r} is given twice (first on line {seen[key]}); "
                                        "remove one")
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _load_yaml(text: str):
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


class ConfigError(ValueError):
    """A config file (or override) is wrong. The message lists every problem, one per line."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid config {source}:\n{lines}")


def format_validation_error(err: ValidationError) -> list[str]:
    """Turn pydantic's error list into `key.path: what is wrong (got X)` lines."""
    problems = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (remove it or check its spelling)"
        elif e["type"] == "missing":
            msg = "required key is missing"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        got = e.get("input")
        if e["type"] not in ("missing", "extra_forbidden") and not isinstance(got, (dict, list)):
            msg += f" (got {got!r})"
        problems.append(f"{path}: {msg}")
    return problems


def parse_override(item: str) -> tuple[list[str], Any]:
    """`train.lr=3e-4` -> (["train", "lr"], 3e-4). Values are parsed as YAML scalars/lists."""
    if "=" not in item:
        raise ConfigError("--set", [f"{item!r}: overrides look like key.path=value"])
    key, raw = item.split("=", 1)
    keys = [k for k in key.strip().split(".") if k]
    if not keys:
        raise ConfigError("--set", [f"{item!r}: empty key"])
    try:
        value = _load_yaml(raw) if raw.strip() else ""
    except _DuplicateKey as e:
        raise ConfigError("--set", [f"{item!r}: {str(e).split(': ', 1)[1]}"]) from None
    except yaml.YAMLError:
        value = raw
    # Only explicit flow syntax makes a mapping/list; `?`, `!` or `a: b` stay the string typed.
    if isinstance(value, dict) and not raw.lstrip().startswith("{"):
        value = raw
    if isinstance(value, list) and not raw.lstrip().startswith("["):
        value = raw
    if value is None and raw.strip() not in ("null", "~", "Null", "NULL"):
        value = raw
    # YAML reads `3e-4` as a string (no dot); users mean a number.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in "eE.") else value
        except ValueError:
            pass
    return keys, value


def _merge(old: Any, new: Any) -> Any:
    """`new` laid over `old`: mappings merge key by key (recursively); anything else, `{}` included, replaces
    (as a stage's `set:` does in a pipeline, krllm.pipeline.config.flatten_set)."""
    if isinstance(old, dict) and isinstance(new, dict) and new:
        out = dict(old)
        for k, v in new.items():
            out[k] = _merge(old.get(k), v)
        return out
    return new


def apply_overrides(data: dict, overrides: Iterable[str]) -> dict:
    """Return a copy of `data` with each `key.path=value` set (creating sections as needed).

    A mapping value merges into the section it names: `--set 'train={lr: 1e-3}'` changes train.lr and
    keeps the file's other train keys (replacing the whole section would silently reset them)."""
    data = copy.deepcopy(data)
    for item in overrides or []:
        keys, value = parse_override(item)
        node = data
        for k in keys[:-1]:
            if not isinstance(node.get(k), dict):
                node[k] = {}
            node = node[k]
        node[keys[-1]] = _merge(node.get(keys[-1]), value)
    return data


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping; errors name the file (and line, for syntax errors)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(str(path), ["is a directory; give a YAML file (e.g. configs/<stage>/<name>.yaml)"])
    if not path.is_file():
        raise ConfigError(str(path), ["file not found"])
    try:
        data = _load_yaml(path.read_text(encoding="utf-8"))
    except _DuplicateKey as e:
        raise ConfigError(str(path), [str(e)]) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(str(path), [f"{where}YAML syntax error: {getattr(e, 'problem', e)}"]) from None
    except UnicodeDecodeError as e:
        raise ConfigError(str(path), [f"not UTF-8 text ({e.reason} at byte {e.start})"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), [f"top level must be a mapping of keys, got {type(data).__name__}"])
    return data


def validate(data: dict, schema: type[T], source: str = "<config>") -> T:
    """Validate a dict against a schema, raising ConfigError with every problem listed."""
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        raise ConfigError(source, format_validation_error(e)) from None


def load_config(path: str | Path | None, schema: type[T], overrides: Iterable[str] = ()) -> T:
    """YAML file (optional) + overrides -> validated config object."""
    data = read_yaml(path) if path else {}
    data = apply_overrides(data, overrides)
    source = str(path) if path else "<defaults>"
    if overrides:
        source += " with --set " + " ".join(overrides)
    return validate(data, schema, source)


def to_plain(cfg: BaseModel) -> dict:
    """JSON/YAML-safe dict of a config (paths as strings)."""
    return cfg.model_dump(mode="json")


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a file so readers see the old or the new content, never half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes 0600; outputs are ordinary shared files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_resolved(cfg: BaseModel, path: str | Path) -> None:
    """Write the fully resolved config (defaults filled in) beside an output."""
    text = yaml.safe_dump(to_plain(cfg), sort_keys=False, allow_unicode=True)
    atomic_write_text(path, text)
