"""Corpus BLEU, chrF and TER through sacrebleu, ROUGE through Google's rouge-score, COMET when present.

Why the libraries: a BLEU number means something only with its signature (tokenizer, smoothing,
case, version), and only when computed the way everyone else computes it. `corpus_scores` builds
sacrebleu's BLEU / CHRF / TER objects exactly as the `sacrebleu` command line does, so

    sacrebleu refs.txt -i hyps.txt -m bleu chrf ter -w 4

prints the same scores and signatures (tests/test_text_metrics.py runs the CLI and compares).

Scales: BLEU and chrF 0-100, higher is better; TER 0-100+ (edits per reference word x 100),
lower is better. BLEU's tokenizer follows the target language as sacrebleu's `-l SRC-TGT` picks it
(13a for English, ko-mecab for Korean, which needs `pip install "sacrebleu[ko]"`); `tokenize`
overrides it (e.g. `char` or `flores200`).
"""

from __future__ import annotations

from krllm.errors import KrllmError, UsageError

METRICS = ("bleu", "chrf", "ter")
BETTER = {"bleu": "higher", "chrf": "higher", "ter": "lower", "rouge1": "higher", "rouge2": "higher",
          "rougeL": "higher", "comet": "higher"}
COMET_HELP = ("COMET needs the `unbabel-comet` package and a COMET model on disk: `pip install unbabel-comet`, "
              "then (online, once) `comet-download -m Unbabel/wmt22-comet-da` or huggingface-cli download "
              "Unbabel/wmt22-comet-da; pass the model's checkpoint path (…/checkpoints/model.ckpt)")


def one_line(text: str) -> str:
    """A hypothesis or reference as one line (sacrebleu's files hold one segment per line)."""
    return " ".join(part.strip() for part in (text or "").splitlines() if part.strip())


def _check(hypotheses: list[str], references: list[str]) -> None:
    if len(hypotheses) != len(references):
        raise KrllmError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    if not references:
        raise KrllmError("no segments to score")


def corpus_scores(hypotheses: list[str], references: list[str], tgt_lang: str | None = None,
                  tokenize: str | None = None, lowercase: bool = False) -> dict:
    """{"bleu", "chrf", "ter": {"score", "signature", ...}} for one reference per segment.

    Equal to `sacrebleu REF -i HYP -m bleu chrf ter [-l xx-TGT] [--tokenize T] [-lc]` on the same lines;
    `lowercase` is the CLI's `-lc`, which lower-cases for BLEU only."""
    from sacrebleu.metrics import BLEU, CHRF, TER

    _check(hypotheses, references)
    hyps = [one_line(h) for h in hypotheses]
    refs = [[one_line(r) for r in references]]
    bleu_args = {"lowercase": lowercase, "trg_lang": tgt_lang or ""}
    if tokenize:
        bleu_args["tokenize"] = tokenize
    try:
        bleu = BLEU(**bleu_args)
    except (ImportError, ModuleNotFoundError, RuntimeError) as e:  # ko-mecab / ja-mecab / spm without their package
        raise KrllmError(f"BLEU tokenizer for target language {tgt_lang!r} is not available ({e}); install it "
                         "(Korean: pip install \"sacrebleu[ko]\") or choose one with --tokenize (e.g. char, intl)"
                         ) from None
    except KeyError:  # an unknown tokenizer name
        from sacrebleu.metrics.bleu import _TOKENIZERS

        raise UsageError(f"--tokenize {tokenize!r}: unknown; sacrebleu has {', '.join(_TOKENIZERS)}") from None
    chrf, ter = CHRF(), TER()  # the CLI's defaults: chrF case-sensitive, TER case-insensitive (TERCOM's)
    out = {}
    for name, metric in (("bleu", bleu), ("chrf", chrf), ("ter", ter)):
        score = metric.corpus_score(hyps, refs)
        out[name] = {"score": float(score.score), "signature": str(metric.get_signature())}
        if name == "bleu":
            out[name].update(precisions=[float(p) for p in score.precisions], bp=float(score.bp),
                             sys_len=int(score.sys_len), ref_len=int(score.ref_len))
    return out


def sentence_chrf(hypothesis: str, reference: str) -> float:
    """chrF of one segment (sacrebleu), to show next to each sample translation."""
    from sacrebleu.metrics import CHRF

    return float(CHRF().sentence_score(one_line(hypothesis), [one_line(reference)]).score)


class _WhitespaceTokenizer:
    """Lower-cased whitespace tokens, for Korean text (rouge-score's default keeps only [a-z0-9])."""

    def tokenize(self, text: str) -> list[str]:
        return (text or "").lower().split()


def rouge_scores(hypotheses: list[str], references: list[str], types=("rouge1", "rouge2", "rougeL"),
                 korean: bool = False) -> dict:
    """Mean F1 x 100 of each ROUGE type over the segments, through Google's `rouge-score` package.

    rouge-score's default tokenizer drops every character outside [a-z0-9], so Korean text scores 0;
    `korean=True` passes a whitespace tokenizer instead (eojeol = token)."""
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise KrllmError("ROUGE needs Google's rouge-score package: pip install rouge-score") from None
    _check(hypotheses, references)
    scorer = rouge_scorer.RougeScorer(list(types), use_stemmer=False,
                                      tokenizer=_WhitespaceTokenizer() if korean else None)
    totals = dict.fromkeys(types, 0.0)
    for h, r in zip(hypotheses, references):
        scores = scorer.score(r, h)  # (target, prediction)
        for t in types:
            totals[t] += scores[t].fmeasure
    return {t: 100 * totals[t] / len(references) for t in types}


def comet_score(sources: list[str], hypotheses: list[str], references: list[str], model_path: str | None,
                batch_size: int = 8) -> dict:
    """System COMET (x 100) with a local COMET checkpoint; a clear message when the package or model is absent."""
    from pathlib import Path

    try:
        from comet import load_from_checkpoint
    except ImportError:
        raise KrllmError(COMET_HELP) from None
    if not model_path or not Path(model_path).is_file():
        raise KrllmError(f"COMET model not found at {model_path!r}. {COMET_HELP}")
    _check(hypotheses, references)
    model = load_from_checkpoint(model_path)
    data = [{"src": s, "mt": h, "ref": r} for s, h, r in zip(sources, hypotheses, references)]
    out = model.predict(data, batch_size=batch_size, gpus=0, progress_bar=False)
    return {"score": 100 * float(out.system_score), "model": str(model_path)}
