"""The main job: chain stages (tokenizer -> data -> pretrain -> sft -> eval -> report) from one config.

    krllm pipeline run configs/pipelines/demo_ko.yaml

- `config.py`  the pipeline YAML schema (stages, their configs, overrides, input wiring)
- `kinds.py`   StageKind / StageContext: what a kind of stage needs, outputs and runs
- `stages/`    the built-in kinds, one module per kind (adapters onto each stage's Python entry point)
- `state.py`   lineage: fingerprints, output hashes, per-stage state files
- `runner.py`  skip / resume / run decisions and running each stage in a child process
- `display.py` live progress table and overall ETA
- `report.py`  the report card (report.md / report.html) from the state files; `plots.py` its curves
- `child.py`   the child-process entry point
"""

from krllm.pipeline.config import PipelineConfig, StageSpec, load_pipeline
from krllm.pipeline.kinds import StageContext, StageKind

__all__ = ["PipelineConfig", "StageSpec", "load_pipeline", "StageContext", "StageKind"]
