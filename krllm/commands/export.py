"""`krllm export gguf|ollama|mlx|int8|int4`: one GGUF file for llama.cpp, a GGUF + Modelfile for Ollama,
an mlx-lm model directory, or krllm's own quantized weights.

    krllm export gguf runs/demo_ko/sft --out demo.gguf --type q8_0
    krllm export gguf runs/npc_lora/adapter --out npc.gguf            # adapter merged first (fp32)
    krllm export ollama runs/demo_ko/sft --out ollama/demo             # then: ollama create demo -f ollama/demo/Modelfile
    krllm export ollama demo.gguf --out ollama/demo --name demo-ko
    krllm export mlx runs/demo_ko/sft --out demo-mlx --q-bits 4           # mlx_lm.generate --model demo-mlx
    krllm export int4 runs/demo_ko/sft --out demo-int4                     # krllm serve demo-int4

For a plain HF directory of merged weights use `krllm merge`; docs/export.md says which to pick.
"""

from __future__ import annotations

import argparse

TYPES_HELP = ("f32 (exact: logits equal transformers'), f16 / bf16 (half the size), q8_0 (1/4 of f32, "
              "near-lossless), q4_0 (1/7 of f32, some quality loss); norms and biases stay f32")


def _source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="HF model directory, PEFT adapter directory (merged into its base first) or a "
                   "run directory (its merged/, hf/ or adapter/, as `krllm serve` picks)")
    p.add_argument("--base", default=None, help="base model of an adapter (default: the one adapter_config.json records)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="export_command", metavar="FORMAT", required=True)
    g = sub.add_parser("gguf", help="Write one .gguf file (llama.cpp, LM Studio, Ollama).",
                       description="Write a Llama / Qwen2 model as a GGUF file with the gguf package: llama.cpp's "
                       "tensor names and layout, the tokenizer with the llama.cpp pre-tokenizer that splits like it, "
                       "BOS off, and the chat template. No llama.cpp binary needed.")
    _source_args(g)
    g.add_argument("--out", required=True, help="the .gguf file to write (written atomically; replaced if it exists)")
    g.add_argument("--type", dest="out_type", default="f16", help=TYPES_HELP + " (default f16)")
    o = sub.add_parser("ollama", help="Write model.gguf + an Ollama Modelfile (ChatML template, stop tokens).",
                       description="Write DIR/model.gguf (exported from a model, or copied from a .gguf) and "
                       "DIR/Modelfile, and print the `ollama create` command. No ollama binary needed.")
    o.add_argument("source", help="a .gguf file, or a model / adapter / run directory (exported first)")
    o.add_argument("--base", default=None, help="base model of an adapter (default: the recorded one)")
    o.add_argument("--out", required=True, help="output directory for model.gguf and Modelfile")
    o.add_argument("--type", dest="out_type", default="q8_0", help=TYPES_HELP + " (default q8_0; ignored for a .gguf)")
    o.add_argument("--name", default=None, help="Ollama model name (default: the output directory's name)")
    m = sub.add_parser("mlx", help="Write a directory mlx-lm loads (mlx_lm.generate / chat / lora), optionally quantized.",
                       description="Write the model (an adapter merged first) through mlx-lm's own load / quantize / "
                       "save, with the rope_theta mlx-lm reads. Needs krllm[mlx].")
    _source_args(m)
    m.add_argument("--out", required=True, help="output directory (written atomically)")
    m.add_argument("--q-bits", type=int, default=None, help="quantize to 2, 3, 4, 5, 6 or 8 bits (default: keep the dtype)")
    m.add_argument("--q-group-size", type=int, default=64, help="columns per quantization group: 32, 64 or 128")
    for fmt, what in (("int8", "int8 weights, one scale per output row (1/4 of fp32, near-lossless)"),
                      ("int4", "int4 weights in groups of --group-size columns, like q4_0 (about 1/7 of fp32)")):
        q = sub.add_parser(fmt, help=f"Save {what} for krllm generate / chat / serve / eval.",
                           description=f"Quantize once and save {what}; every krllm command loads the directory "
                           "as saved, without the fp32 weights. Layout: docs/quantization.md.")
        _source_args(q)
        q.add_argument("--out", required=True, help="output directory (written atomically)")
        q.add_argument("--group-size", type=int, default=None, help="int4 columns per scale (a multiple of 32; default 32)")


def run(args: argparse.Namespace) -> int:
    if args.export_command == "mlx":
        from krllm.export.mlx import export_mlx

        out = export_mlx(args.source, args.out, q_bits=args.q_bits, q_group_size=args.q_group_size, base=args.base)
        print(f"wrote {out}" + (f" ({args.q_bits}-bit, groups of {args.q_group_size})" if args.q_bits else ""))
        print(f"next: mlx_lm.generate --model {out} --prompt \"안녕하세요\"")
        return 0
    if args.export_command in ("int8", "int4"):
        from krllm.export.quantized import export_quantized

        out = export_quantized(args.source, args.out, args.export_command, group_size=args.group_size, base=args.base)
        size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
        print(f"wrote {out} ({size / 2**20:.1f} MiB, {args.export_command})")
        print(f"next: krllm serve {out}")
        return 0
    if args.export_command == "gguf":
        from krllm.export.gguf import export_gguf

        out = export_gguf(args.source, args.out, args.out_type, base=args.base)
        print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, {args.out_type})")
        return 0
    from krllm.export.ollama import export_ollama

    modelfile, command = export_ollama(args.source, args.out, args.out_type, base=args.base, name=args.name)
    print(f"wrote {modelfile.parent / 'model.gguf'} and {modelfile}")
    print(f"next: {command}")
    return 0
