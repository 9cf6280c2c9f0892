"""Token formats: memmap token shards (shards.py) and chat messages -> ids + labels (chat_tokens.py)."""
