"""`krllm data prepare` on datatrove: sources -> clean -> filter -> dedupe -> split -> token shards.

    config.py     PrepareConfig, the schema of configs/data/*.yaml (no datatrove import)
    job.py        plan the stages and run them: `prepare(cfg)` -> manifest
    readers.py    datatrove readers over krllm.data.sources (InputReader) and of stage-1 output
    steps.py      cleaning, filters, dedupe wiring, split + tokenize
    textclean.py  the pure text functions the steps are made of
    finalize.py   number the shards, write manifest.json, publish atomically
    progress.py   progress bars fed by worker processes
    _forkserver_warmup.py  preloaded by the forkserver (worker start-up)

Empty on purpose: importing `krllm.data.prepare.config` must not import datatrove.
"""
