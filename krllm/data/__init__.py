"""The data room: text sources in, training data out.

    sources.py  THE source reader (files, directories, globs, jsonl, parquet, builtin:...), shared by
                tokenizer training and `krllm data prepare`
    prepare/    `krllm data prepare`: the datatrove job (config, readers, cleaning steps, finalize, progress)
    sets/       record schemas (records.py) and the data sets we ship: generated from a seed
                (generated.py), built-in Korean prose (builtin.py) and LibreOffice's Korean/English help
                fetched once from Debian packages (help_corpus.py, _deb.py)
    tokens/     token formats: memmap shards (shards.py), chat messages -> ids + labels (chat_tokens.py)

Nothing here imports datatrove at package import: only `prepare/` needs it.
"""
