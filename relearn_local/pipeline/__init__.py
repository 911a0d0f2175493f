"""The whole pipeline in one command: ``relearn-local run``."""

from .config import RunConfig, load_run_config
from .stages import PipelineResult, StageRecord, run_pipeline

__all__ = ["PipelineResult", "RunConfig", "StageRecord", "load_run_config", "run_pipeline"]
