"""SFT tokenization: loss on assistant turns only, the end-of-turn token always learned, the same labels
for any chat template (markers or none), and agreement with TRL's own assistant-only labels."""

import pytest
from sft_tiny import CHATML_CONTENT_ONLY, CHATML_NO_MARKERS, tiny_base

from krllm.data.tokens import chat_tokens as C
from krllm.data.sets.records import load_examples
from krllm.errors import DataError
from krllm.train import sft_data as D

CONVO = [
    {"role": "system", "content": "너는 대장장이다."},
    {"role": "user", "content": "검 얼마예요?"},
    {"role": "assistant", "content": "검은 40골드라네."},
    {"role": "user", "content": "깎아 주세요."},
    {"role": "assistant", "content": "35골드까지는 해 주지."},
]


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_base()[0])


def learned_text(tok, ids, labels):
    return tok.decode([x for x in labels if x != C.IGNORE], skip_special_tokens=False)


def test_assistant_only_labels_end_with_im_end(tok):
    ids, labels = C.tokenize_chat(tok, CONVO)
    assert len(ids) == len(labels)
    assert learned_text(tok, ids, labels) == "검은 40골드라네.<|im_end|>35골드까지는 해 주지.<|im_end|>"
    # learned tokens are exactly the ids at those positions (labels are unshifted, the model shifts)
    assert all(lab in (C.IGNORE, i) for i, lab in zip(ids, labels))
    # the rendered text is the chat template's, untouched
    assert tok.decode(ids, skip_special_tokens=False) == tok.apply_chat_template(CONVO, tokenize=False)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert C.turn_end_id(tok) == im_end and C.stop_ids(tok) == [im_end, tok.eos_token_id]


@pytest.mark.parametrize("template", [CHATML_CONTENT_ONLY, CHATML_NO_MARKERS], ids=["content-only", "no-markers"])
def test_same_labels_for_any_template_variant(tok, template):
    """Markers around content only (EOS outside) or no markers at all: still content + <|im_end|> learned."""
    ref = C.tokenize_chat(tok, CONVO)
    other = tok.__class__.from_pretrained(tiny_base()[0])
    other.chat_template = template
    assert C.tokenize_chat(other, CONVO) == ref


def test_labels_match_trl_assistant_only_loss(tok, tmp_path):
    """TRL's SFTTrainer(assistant_only_loss=True) on the same conversations gives the same labels."""
    import datasets
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    convos = [r["messages"] for r in load_examples("builtin:npc", "sft", n=6)] + [CONVO]
    model = AutoModelForCausalLM.from_pretrained(tiny_base()[1])
    args = SFTConfig(output_dir=str(tmp_path), assistant_only_loss=True, max_length=None, report_to="none",
                     use_cpu=True, bf16=False)
    trainer = SFTTrainer(model=model, args=args, processing_class=tok,
                         train_dataset=datasets.Dataset.from_list([{"messages": m} for m in convos]))
    for row, msgs in zip(trainer.train_dataset, convos):
        assert C.tokenize_chat(tok, msgs) == (row["input_ids"], row["labels"])


def test_trl_would_not_learn_eos_with_content_only_markers_but_we_do(tok):
    """The failure this module exists for: transformers' assistant mask misses <|im_end|> when the
    template leaves it outside {% generation %}; our labels still include it."""
    other = tok.__class__.from_pretrained(tiny_base()[0])
    other.chat_template = CHATML_CONTENT_ONLY
    out = other.apply_chat_template(CONVO, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    hf_learned = [i for i, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    im_end = other.convert_tokens_to_ids("<|im_end|>")
    assert im_end not in hf_learned
    ids, labels = C.tokenize_chat(other, CONVO)
    assert [x for x in labels if x != C.IGNORE].count(im_end) == 2


def test_finish_labels_appends_eot_when_the_conversation_lacks_it():
    ids, labels = C.finish_labels([5, 6, 7, 8], [0, 0, 1, 1], eot=3)
    assert ids == [5, 6, 7, 8, 3] and labels == [-100, -100, 7, 8, 3]
    # eot inside the span: learned, and nothing after it in the span
    ids, labels = C.finish_labels([5, 7, 3, 9, 5], [0, 1, 1, 1, 0], eot=3)
    assert labels == [-100, 7, 3, -100, -100]


def test_loss_on_all_and_plain_text(tok):
    ids, labels = C.tokenize_chat(tok, CONVO, loss_on="all")
    assert labels == ids and ids == tok.apply_chat_template(CONVO)["input_ids"]  # nothing appended: ChatML ends
    assert ids.count(C.turn_end_id(tok)) == len(CONVO)  # every turn with its <|im_end|>
    ids, labels = C.tokenize_text(tok, "대한민국은 민주공화국이다.")
    assert labels == ids and ids[-1] == tok.eos_token_id
    assert tok.decode(ids[:-1]) == "대한민국은 민주공화국이다."


def test_tokenize_records_counts_truncation_and_drops_rows_without_targets(tok):
    recs = [{"messages": CONVO}, {"text": "짧은 글"}]
    full, stats = D.tokenize_records(recs, tok, max_length=4096)
    assert stats.examples == 2 and stats.truncated == 0
    assert [r["length"] for r in full] == [len(r["input_ids"]) for r in full]
    assert stats.tokens == sum(r["length"] for r in full)
    # cut inside the system prompt: the chat row has nothing to learn and is dropped; the text row is cut
    rows, stats = D.tokenize_records(recs, tok, max_length=5)
    assert stats.truncated == 2 and stats.dropped_no_target == 1 and stats.examples == 1
    assert rows[0]["input_ids"] == full[1]["input_ids"][:5]


def test_chat_data_needs_a_template(tok):
    other = tok.__class__.from_pretrained(tiny_base()[0])
    other.chat_template = None
    with pytest.raises(DataError, match="no chat template"):
        D.tokenize_records([{"messages": CONVO}], other, 512)
