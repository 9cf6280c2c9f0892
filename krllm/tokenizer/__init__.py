"""The tokenizer room: train a Korean-aware byte-level BPE and compare tokenizers.

    pretokenize.py    special tokens + fixed ids, normalizer, the Split regexes + their llama.cpp names
    char_merges.py    merge_unit: char (merges over characters, written as a byte-level BPE)
    chat_template.py  the ChatML template with {% generation %} markers
    train.py          TokenizerTrainConfig + train_tokenizer() -> an HF tokenizer directory (reads its
                      corpus through krllm.data.sources, the reader data prepare uses too)
    compare.py        tokens/char, tokens/eojeol, bytes/token, round trip for any tokenizer dirs

Heavy libraries (tokenizers, transformers) are imported inside functions, so importing this
package stays cheap for the CLI.
"""
