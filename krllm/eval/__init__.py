"""Evaluation (the report card of a pipeline run is krllm.pipeline.report).

- `run.py`        the eval stage (`krllm eval`): EvalConfig, run_eval -> eval.json
- `perplexity.py` token perplexity on shards; loss on labeled (chat) tokens
- `generate.py`   greedy chat answers with krllm's inference engine
- `math.py`       final-answer extraction and exact match
- `samples.py`    fixed Korean NPC prompts for before/after answers
"""
