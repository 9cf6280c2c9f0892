"""Data sets: JSONL record schemas (records.py), sets generated from a seed (generated.py, with the
_gen_* helpers) and built-in Korean prose (builtin.py); `builtin:` specs name the last two."""
