"""TRL/PEFT plumbing shared by every fine-tuning method (sft, classify; later dpo, grpo, reward, ppo).

- `config.py`     the config sections every method shares: peft, train, tracking (pydantic only)
- `model.py`      tokenizer and base-model loading (the one `load_base_model`), QLoRA base, PEFT config, freezing
- `batching.py`   collators, length-grouped sampler, packing, per-device batching choice, token counter
- `trainer.py`    TrainingArguments from our train section, length-aware sampling, early stopping, final eval
- `callbacks.py`  metrics.jsonl / TensorBoard logging and the progress line
- `outputs.py`    run directory (resume / overwrite), atomic final adapter / merged / hf directories, ranks
- `samples.py`    greedy answers before / after training (samples.md)

A method module (krllm/train/sft.py, classify.py) holds only what is its own: its data, its loss, its
config sections, and its run flow written out top to bottom with these pieces.
"""
