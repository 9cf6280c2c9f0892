"""Data sets: JSONL record schemas (records.py), sets generated from a seed (generated.py, with the
_gen_* helpers), built-in Korean prose (builtin.py) and LibreOffice's Korean/English help from Debian
packages (help_corpus.py, reading .deb files with _deb.py); `builtin:` specs name the last three."""
