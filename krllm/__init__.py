"""krllm: raw Korean text → tokenizer → pretrained Llama → fine-tuned, aligned, served chat model.

Every stage reads and writes plain artifacts in a run directory; the Hugging Face checkpoint
directory is the interchange format between stages (see docs/ and ../shared/DESIGN.md).
"""

__version__ = "0.1.0"
