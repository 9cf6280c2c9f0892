"""`python -m krllm ...` — same as the `krllm` command (needed under `torchrun -m krllm`)."""

from krllm.cli import main

if __name__ == "__main__":
    main()
