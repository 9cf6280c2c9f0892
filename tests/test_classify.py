"""classify-train: LoRA sequence classification on the built-in Korean sentiment set beats the
majority baseline on held-out data; metrics are right (hand-computed, and sklearn when installed);
predictions line up with their texts; the adapter (with its trained head) merges exactly."""

import json
from pathlib import Path

import pytest
import torch
from sft_tiny import one_thread, tiny_base, write_jsonl

from krllm.config import validate
from krllm.errors import DataError
from krllm.train.classify import ClassifyRunConfig, classification_report, run_classify


def test_report_matches_hand_computed_numbers():
    # 3 classes; confusion (true x pred): [[2,1,0],[0,1,1],[0,0,0]] + class 2 never occurs
    y_true = [0, 0, 0, 1, 1]
    y_pred = [0, 0, 1, 1, 2]
    rep = classification_report(y_true, y_pred, ["a", "b", "c"])
    assert rep["confusion"] == [[2, 1, 0], [0, 1, 1], [0, 0, 0]]
    assert rep["accuracy"] == pytest.approx(3 / 5)
    # a: P=2/2 R=2/3 F1=0.8 ; b: P=1/2 R=1/2 F1=0.5 ; c: P=0 (1 predicted, 0 right) R=0 (no support) F1=0
    assert rep["per_class"]["a"]["f1"] == pytest.approx(0.8)
    assert rep["per_class"]["b"]["f1"] == pytest.approx(0.5)
    assert rep["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert rep["f1_macro"] == pytest.approx((0.8 + 0.5 + 0.0) / 3)
    assert rep["majority_baseline"] == pytest.approx(3 / 5)


def test_report_matches_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(0)
    y_true = torch.randint(0, 4, (200,), generator=g).tolist()
    y_pred = [t if torch.rand(1, generator=g).item() < 0.6 else int(torch.randint(0, 4, (1,), generator=g))
              for t in y_true]
    rep = classification_report(y_true, y_pred, list("abcd"))
    assert rep["accuracy"] == pytest.approx(metrics.accuracy_score(y_true, y_pred))
    assert rep["f1_macro"] == pytest.approx(metrics.f1_score(y_true, y_pred, average="macro"))


def cfg_for(tmp_path, **data) -> ClassifyRunConfig:
    _, model_dir = tiny_base()
    return validate({
        "name": "cls", "runs_dir": str(tmp_path / "runs"), "base_model": str(model_dir),
        "data": {"n": 800, "eval_fraction": 0.25, **data},
        "train": {"max_steps": 80, "batch_size": 16, "lr": 3e-3, "warmup": 0, "eval_steps": 40,
                  "logging_steps": 20},
        "tracking": {"tensorboard": False}}, ClassifyRunConfig)


@pytest.mark.slow
def test_sentiment_lora_beats_the_majority_baseline_and_merges(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from krllm.data.sets.records import load_examples
    from krllm.export.merge import merge_adapter
    from krllm.train.classify import split

    cfg = cfg_for(tmp_path)
    with one_thread():
        rep = run_classify(cfg)
    run = Path(cfg.runs_dir) / "cls"
    # measured on this tiny random base: ~0.8 accuracy vs ~0.55 majority
    assert rep["n"] == 200 and rep["labels"] == ["negative", "positive"]
    assert rep["accuracy"] > rep["majority_baseline"] + 0.15, rep
    assert rep["f1_macro"] > 0.65, rep
    assert json.loads((run / "eval.json").read_text())["f1_macro"] == pytest.approx(rep["f1_macro"])

    # predictions.jsonl: one line per held-out example, in split order, with its own label
    _, held = split(cfg)
    preds = [json.loads(x) for x in (run / "predictions.jsonl").read_text().splitlines()]
    assert [(p["text"], p["label"]) for p in preds] == [(r["text"], r["label"]) for r in held]
    assert sum(p["pred"] == p["label"] for p in preds) / len(preds) == pytest.approx(rep["accuracy"])
    assert set(load_examples("builtin:sentiment", "classify", n=800)[0]) == {"text", "label"}

    # the adapter carries the trained head; merged logits equal PEFT's
    assert json.loads((run / "adapter" / "labels.json").read_text()) == {"labels": ["negative", "positive"]}
    base = AutoModelForSequenceClassification.from_pretrained(cfg.base_model, num_labels=2, pad_token_id=1)
    pm = PeftModel.from_pretrained(base, run / "adapter").eval()
    merged_dir = merge_adapter(run / "adapter", tmp_path / "merged")
    merged = AutoModelForSequenceClassification.from_pretrained(merged_dir).eval()
    assert merged.config.id2label == {0: "negative", 1: "positive"}
    ids = torch.randint(4, 900, (3, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), one_thread():
        torch.testing.assert_close(merged(input_ids=ids).logits, pm(input_ids=ids).logits, rtol=1e-4, atol=1e-4)


def test_unknown_eval_labels_are_an_error(tmp_path):
    train = write_jsonl(tmp_path / "t.jsonl", [{"text": "좋다", "label": "pos"}, {"text": "싫다", "label": "neg"}])
    val = write_jsonl(tmp_path / "v.jsonl", [{"text": "그냥", "label": "neutral"}])
    with pytest.raises(DataError, match=r"labels \['neutral'\] are not in data.labels \['neg', 'pos'\]"):
        run_classify(cfg_for(tmp_path, train=str(train), eval=str(val)))


def test_overwrite_with_bad_data_keeps_the_previous_run(tmp_path):
    """--overwrite checks the new data and base model before it clears the finished run (issue 15 item 1)."""
    from krllm.errors import KrllmError

    cfg = validate({**cfg_for(tmp_path).model_dump(mode="json"), "data": {"n": 40, "eval_fraction": 0.25},
                    "train": {"max_steps": 2, "batch_size": 8, "eval_steps": 2, "save_steps": 2}}, ClassifyRunConfig)
    with one_thread():
        run_classify(cfg)
    run = Path(cfg.runs_dir) / "cls"
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    assert (run / "eval.json").exists() and (run / "adapter").is_dir()
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "좋다"}])  # no label
    with pytest.raises(DataError, match="bad.jsonl:1: label"):
        run_classify(validate({**cfg.model_dump(mode="json"), "data": {"train": str(bad)}}, ClassifyRunConfig),
                     overwrite=True)
    with pytest.raises(KrllmError, match="base_model /nonexistent"):
        run_classify(validate({**cfg.model_dump(mode="json"), "base_model": "/nonexistent"}, ClassifyRunConfig),
                     overwrite=True)
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before
