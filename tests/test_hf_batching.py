"""Batching: packed rows never let documents attend to each other (logits equal each document run
alone), padded batches change nothing, and length grouping really removes padding."""

import random

import pytest
import torch
from sft_tiny import one_thread, tiny_base

from krllm.errors import KrllmError
from krllm.train.hf import batching as B


@pytest.fixture(scope="module")
def model():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_base()[1]).eval()


def docs(lengths, vocab=900, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(4, vocab, (n,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": ids})
    return out


def test_pack_rows_first_fit_decreasing():
    lengths = [7, 13, 5, 9, 20, 1, 3]
    rows = B.pack_rows(lengths, 20)
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in r) <= 20 for r in rows)
    assert rows == [[4], [1, 0], [3, 2, 6, 5]]  # FFD: 20 | 13+7 | 9+5+3+1
    with pytest.raises(ValueError, match="does not fit"):
        B.pack_rows([21], 20)


def test_packed_documents_never_attend_to_each_other(model):
    batch_docs = docs([7, 13, 5, 9, 11, 2])
    batch = B.PackedCollator(pad_token_id=1, max_length=24)(batch_docs)
    assert batch["input_ids"].shape[0] < len(batch_docs)  # really packed
    rows = B.pack_rows([len(d["input_ids"]) for d in batch_docs], 24)
    with torch.no_grad(), one_thread():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        # the explicit block-diagonal mask gives the same logits (reference for what the model derives)
        masked = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                       attention_mask=B.block_causal_mask(batch["position_ids"]), use_cache=False).logits
        torch.testing.assert_close(packed, masked)
        for r, row in enumerate(rows):
            t = 0
            for i in row:
                ids = batch_docs[i]["input_ids"]
                alone = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0]
                torch.testing.assert_close(packed[r, t: t + len(ids)], alone, rtol=1e-4, atol=1e-5)
                assert batch["labels"][r, t].item() == -100  # never predict a document from the previous one
                assert batch["labels"][r, t + 1: t + len(ids)].tolist() == ids[1:]
                assert batch["position_ids"][r, t: t + len(ids)].tolist() == list(range(len(ids)))
                t += len(ids)
            assert (batch["labels"][r, t:] == -100).all()  # padding is never learned


def test_block_causal_mask_shape_and_blocks():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0]])
    m = B.block_causal_mask(pos)[0, 0]
    assert m.shape == (6, 6)
    assert m[4].tolist() == [False, False, False, True, True, False]  # second doc, 2nd token
    assert m[5].tolist() == [False] * 5 + [True]


def test_isolation_check_passes_on_llama_and_catches_a_leaky_model(model):
    assert B.check_packing_isolation(model, 900) < 1e-4

    class Leaky(torch.nn.Module):  # logits = running sum of embeddings: every token sees all before it
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(900, 8)

        def forward(self, input_ids, position_ids=None, use_cache=False):
            return type("Out", (), {"logits": self.emb(input_ids).cumsum(1)})

    with pytest.raises(KrllmError, match="attend to each other"):
        B.check_packing_isolation(Leaky(), 900)


def test_padding_changes_nothing(model):
    batch_docs = docs([5, 12, 8])
    batch = B.PadCollator(pad_token_id=1)(batch_docs)
    assert batch["input_ids"].shape == (3, 12)
    assert batch["attention_mask"].sum(1).tolist() == [5, 12, 8]
    assert (batch["labels"][0, 5:] == -100).all()
    with torch.no_grad(), one_thread():
        padded = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        for i, d in enumerate(batch_docs):
            alone = model(input_ids=torch.tensor([d["input_ids"]])).logits[0]
            torch.testing.assert_close(padded[i, : len(d["input_ids"])], alone, rtol=1e-4, atol=1e-5)


def test_token_counter_and_multiple_of():
    c = B.TokenCounter()
    col = B.PadCollator(pad_token_id=1, pad_to_multiple_of=8, counter=c)
    assert col(docs([3, 10]))["input_ids"].shape == (2, 16)
    assert c.take() == (13, 32, 2) and c.take() == (0, 0, 0)
    c.paused = True  # what the trainer does while evaluating
    col(docs([3]))
    assert c.take() == (0, 0, 0)


def test_resolve_batching_per_device():
    assert B.resolve_batching("auto", torch.device("cpu")) == "length_grouped"
    assert B.resolve_batching("packed", torch.device("cpu")) == "packed"
    with pytest.raises(KrllmError, match="flash-attn"):
        B.resolve_batching("padding_free", torch.device("cpu"))


def test_length_grouped_trainer_batches_have_little_padding(tmp_path):
    """The real dataloader of the SFT trainer: length_grouped pads far less than random batches."""
    from krllm.config import validate
    from krllm.train import sft
    from krllm.train.sft_config import SFTRunConfig

    rng = random.Random(0)
    lengths = [rng.randint(20, 400) for _ in range(256)]
    rows = [{"input_ids": d["input_ids"], "labels": d["labels"], "length": len(d["input_ids"])}
            for d in docs(lengths)]
    tok_dir, model_dir = tiny_base()
    pad = {}
    for mode in ("length_grouped", "random"):
        cfg = validate({"base_model": str(model_dir), "train": {"batching": mode, "batch_size": 8},
                        "data": {"eval_fraction": 0}}, SFTRunConfig)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(tok_dir)
        prep = sft.Prepared(torch.device("cpu"), torch.float32, mode, tok,
                            AutoModelForCausalLM.from_pretrained(model_dir), [], [], rows, [], None)
        counter = B.TokenCounter()
        trainer = sft.make_trainer(cfg, prep, tmp_path / mode, counter)
        seen = []
        for batch in trainer.get_train_dataloader():
            seen += batch["attention_mask"].sum(1).tolist()
        assert sorted(seen) == sorted(lengths)  # every example exactly once per epoch
        real, slots, n = counter.take()
        pad[mode] = 1 - real / slots
    assert pad["length_grouped"] < 0.04 < 0.3 < pad["random"], pad  # measured: 2.5% vs 42%


def test_length_grouped_sampler_is_a_seeded_permutation_per_epoch():
    lengths = [random.Random(1).randint(1, 500) for _ in range(100)]
    s = B.LengthGroupedSampler(lengths, batch_size=4, seed=3)
    first = list(s)
    assert sorted(first) == list(range(100))
    assert list(B.LengthGroupedSampler(lengths, batch_size=4, seed=3)) == first  # resume replays the order
    assert max(lengths[i] for i in first[:4]) == max(lengths)  # longest batch first
    s.set_epoch(1)
    assert list(s) != first


def test_packed_and_padded_batches_give_the_same_loss(tmp_path):
    """Same examples, same model: the loss of one packed batch equals that of one padded batch."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from krllm.config import validate
    from krllm.data.sets.records import load_examples
    from krllm.train import sft
    from krllm.train.sft_config import SFTRunConfig
    from krllm.train.sft_data import tokenize_records

    tok_dir, model_dir = tiny_base()
    tok = AutoTokenizer.from_pretrained(tok_dir)
    rows, _ = tokenize_records(load_examples("builtin:npc", "sft", n=6), tok, 1024)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    losses = {}
    for mode in ("packed", "length_grouped"):
        cfg = validate({"base_model": str(model_dir), "peft": {"method": "full"},
                        "train": {"batching": mode, "batch_size": 6, "dtype": "fp32"},
                        "data": {"eval_fraction": 0, "max_length": 1024}}, SFTRunConfig)
        prep = sft.Prepared(torch.device("cpu"), torch.float32, mode, tok, model, [], [], rows, [], None)
        trainer = sft.make_trainer(cfg, prep, tmp_path / mode)
        batch = next(iter(trainer.get_train_dataloader()))
        assert ("position_ids" in batch) == (mode == "packed")
        with torch.no_grad(), one_thread():
            losses[mode] = trainer.compute_loss(trainer.model, batch).item()
    assert losses["packed"] == pytest.approx(losses["length_grouped"], rel=1e-5), losses


@pytest.mark.parametrize("mode", ["length_grouped", "packed"])
def test_compact_loss_equals_trl_loss_and_gradients(tmp_path, mode):
    """CPU fast path (head on learned positions only) == TRL's own compute_loss, value and gradients."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from krllm.config import validate
    from krllm.data.sets.records import load_examples
    from krllm.train import sft
    from krllm.train.sft_config import SFTRunConfig
    from krllm.train.sft_data import tokenize_records

    tok_dir, model_dir = tiny_base()
    tok = AutoTokenizer.from_pretrained(tok_dir)
    rows, _ = tokenize_records(load_examples("builtin:npc", "sft", n=5), tok, 1024)
    cfg = validate({"base_model": str(model_dir), "peft": {"r": 4, "alpha": 8, "dropout": 0.0},
                    "train": {"batching": mode, "batch_size": 5, "dtype": "fp32"},
                    "data": {"eval_fraction": 0, "max_length": 1024}}, SFTRunConfig)
    prep = sft.Prepared(torch.device("cpu"), torch.float32, mode, tok, AutoModelForCausalLM.from_pretrained(model_dir),
                        [], [], rows, [], None)
    trainer = sft.make_trainer(cfg, prep, tmp_path)
    with torch.no_grad():  # non-zero adapters, so their gradients are not trivially equal
        for n, prm in trainer.model.named_parameters():
            if "lora_B" in n:
                prm.normal_(0, 0.1)
    batch = next(iter(trainer.get_train_dataloader()))
    results = {}
    with one_thread():
        for compact in (True, False):
            trainer.krllm_compact_loss = compact
            trainer.model.zero_grad()
            loss = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=None)
            loss.backward()
            grads = {n: prm.grad.clone() for n, prm in trainer.model.named_parameters() if prm.grad is not None}
            results[compact] = (loss.item(), grads, trainer._metrics["train"]["mean_token_accuracy"][-1])
    assert results[True][0] == pytest.approx(results[False][0], rel=1e-5)
    assert results[True][2] == pytest.approx(results[False][2])
    assert results[True][1].keys() == results[False][1].keys() and results[True][1]
    for n in results[True][1]:
        torch.testing.assert_close(results[True][1][n], results[False][1][n], rtol=1e-4, atol=1e-6)


def test_compact_loss_keeps_mixed_precision(tmp_path):
    """accelerate applies bf16 autocast by wrapping the model's forward; the compact path calls the
    backbone directly and must enter it too (a regression here silently ran the matmuls in fp32)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from krllm.config import validate
    from krllm.data.sets.records import load_examples
    from krllm.train import sft
    from krllm.train.sft_config import SFTRunConfig
    from krllm.train.sft_data import tokenize_records

    tok_dir, model_dir = tiny_base()
    tok = AutoTokenizer.from_pretrained(tok_dir)
    rows, _ = tokenize_records(load_examples("builtin:npc", "sft", n=4), tok, 1024)
    cfg = validate({"base_model": str(model_dir), "train": {"batch_size": 4, "dtype": "bf16"},
                    "data": {"eval_fraction": 0}}, SFTRunConfig)
    prep = sft.Prepared(torch.device("cpu"), torch.bfloat16, "length_grouped", tok,
                        AutoModelForCausalLM.from_pretrained(model_dir), [], [], rows, [], None)
    trainer = sft.make_trainer(cfg, prep, tmp_path)
    batch = next(iter(trainer.get_train_dataloader()))
    seen = []
    layer = trainer.model.get_base_model().model.layers[0].mlp.down_proj
    handle = layer.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    with one_thread():
        compact = trainer.compute_loss(trainer.model, dict(batch)).item()  # no outer autocast: it enters its own
        assert seen == [torch.bfloat16]
        trainer.krllm_compact_loss = False
        with trainer.accelerator.autocast():  # what accelerate's forward wrapper does for TRL's path in train()
            reference = trainer.compute_loss(trainer.model, dict(batch)).item()
    handle.remove()
    assert seen == [torch.bfloat16, torch.bfloat16]
    assert compact == pytest.approx(reference, rel=1e-3)
