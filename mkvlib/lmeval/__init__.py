"""Accuracy versus compression through lm-evaluation-harness (notebook 04).

- :mod:`.tasks`: lm-eval's built-in task definitions, online, or pointed at local files (offline).
- :mod:`.evaluate`: run ``lm_eval.simple_evaluate`` with HFLM wrapping the compressed in-memory model.
- :mod:`.sweep`: methods x budgets x tasks, each finished cell stored at once, resumable.
- :mod:`.report`: tables (the paper's Table 1 layout) and plots of accuracy against budget.
- :mod:`.recipes`: set-ups named by how their projections were made and how their ranks were chosen.
"""
from .evaluate import LMEvalConfig, flat_result, run_lm_eval, wrap
from .sweep import BUDGETS, METHODS, Sweep, SweepConfig
from .tasks import LOCAL_TASKS, TaskFilesMissingError, available_local_tasks, write_local_tasks

__all__ = ["LMEvalConfig", "run_lm_eval", "flat_result", "wrap", "Sweep", "SweepConfig", "METHODS",
           "BUDGETS", "LOCAL_TASKS", "TaskFilesMissingError", "available_local_tasks", "write_local_tasks"]
