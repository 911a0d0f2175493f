"""The evaluate stage: KFR, KRR and LS of a model on the forget and retain sets, as in the ReLearn paper.

Modules by concern:

- ``config``: ``EvaluateConfig``
- ``items``: forget/retain questions, or existing answers read from files
- ``generation``: answers from the model under evaluation, cleaned
- ``lexical``: word tokens, Brunet's index, Honore's statistic, ROUGE recall
- ``perplexity``: answer perplexity under the reference model
- ``entities``: entity extraction and fuzzy matching through sentence embeddings
- ``nli``: NLI verdicts from a local classifier or an LLM judge
- ``scoring``: KFR/KRR labels, N/A handling, LS
- ``report``: EVAL.json, SUMMARY.json, answers.jsonl and table rows
- ``compare``: two runs side by side with a bar chart
- ``stage``: ``run_evaluate``, which runs them in order
"""

from __future__ import annotations

from .compare import CompareResult, compare_runs
from .config import EvaluateConfig
from .stage import EvaluateResult, run_evaluate

__all__ = ["CompareResult", "EvaluateConfig", "EvaluateResult", "compare_runs", "run_evaluate"]
