"""`krllm chat DIR`: chat in the terminal with the model's chat template, replies streamed.

    krllm chat runs/demo/sft
    krllm chat runs/demo/sft --system "당신은 친절한 도우미입니다." --temperature 0.7

Commands inside the chat: /reset (forget the conversation), /system TEXT (set the system
message and reset), /exit (or Ctrl-D). Ctrl-C stops the reply being generated.
"""

from __future__ import annotations

import sys

from krllm.commands.generate import add_sampling_arguments, sampling_from

HELP = "commands: /reset  /system TEXT  /exit   (Ctrl-C stops a reply, Ctrl-D exits)"


def add_arguments(p) -> None:
    p.add_argument("model", help="model directory with a chat template (an SFT run, its adapter/ or hf/)")
    p.add_argument("--system", default=None, help="system message at the start of the conversation")
    add_sampling_arguments(p, max_new_tokens=256)


def chat_loop(gen, sampling, max_new_tokens: int, stops: list[str], system: str | None,
              read=input, write=sys.stdout.write) -> None:
    """The REPL over a `Generator`, with input/output injectable so tests drive it without a terminal."""
    history: list[dict] = []
    write(f"{HELP}\n")
    while True:
        try:
            line = read("you> ")
        except EOFError:
            write("\n")
            return
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return
        if text == "/reset":
            history = []
            write("(conversation cleared)\n")
            continue
        if text.startswith("/system"):
            system = text[len("/system"):].strip() or None
            history = []
            write(f"(system message {'set' if system else 'removed'}; conversation cleared)\n")
            continue
        if text.startswith("/"):
            write(f"unknown command {text.split()[0]!r}; {HELP}\n")
            continue
        messages = ([{"role": "system", "content": system}] if system else []) + history + \
            [{"role": "user", "content": text}]
        ids = gen.encode_chat(messages)
        room = gen.room(ids) - 1
        if room < 1:
            write(f"(the conversation is {len(ids)} tokens, the model holds {gen.engine.max_seq_len}: /reset to "
                  "start over)\n")
            continue
        write("bot> ")
        reply = ""
        pieces = gen.stream_ids(ids, sampling, min(max_new_tokens, room), stops)
        try:
            for piece in pieces:
                write(piece)
                reply += piece
                if hasattr(sys.stdout, "flush"):
                    sys.stdout.flush()
        except KeyboardInterrupt:
            write(" (stopped)")
        finally:
            pieces.close()
        write("\n")
        history += [{"role": "user", "content": text}, {"role": "assistant", "content": reply}]


def run(args) -> int:
    from rich.console import Console

    from krllm.errors import KrllmError
    from krllm.infer.generator import Generator

    sampling = sampling_from(args)
    gen = Generator.from_pretrained(args.model, base=args.base, device=args.device, dtype=args.dtype)
    if not gen.lm.has_chat_template:
        raise KrllmError(f"{gen.lm.path}: the tokenizer has no chat template; use `krllm generate` instead")
    Console(stderr=True).print(gen.describe(), style="dim")
    chat_loop(gen, sampling, args.max_new_tokens, args.stop, args.system)
    return 0
