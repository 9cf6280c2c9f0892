"""Errors a user can act on. The CLI prints them without a traceback (KRLLM_DEBUG=1 shows it)."""


class KrllmError(RuntimeError):
    """An expected failure: bad input file (message names file:line), missing run, wrong device..."""


class DataError(KrllmError):
    """Malformed input data: the message names the file and line (or record) and what is wrong."""


class UsageError(KrllmError):
    """A value the user gave (a config key, a path) cannot be used: exit status 2, like a config error."""
