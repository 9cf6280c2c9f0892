"""MLX (Apple's array framework, also on Linux CPU) interop: mlx-lm adapters <-> PEFT adapters, mlx-lm model
export, and `krllm sft --backend mlx`. Only `train` and `krllm.export.mlx` import mlx; adapter conversion
needs torch + safetensors alone, so an MLX-trained adapter moves to a GPU machine without MLX installed."""
