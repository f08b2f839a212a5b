"""Evaluation: generation + metrics (VQA accuracy, EM, ANLS, BLEU/METEOR/ROUGE-L/CIDEr-D, perplexity)."""

from taid_vlm.evaluation.compare import compare_main, compare_results
from taid_vlm.evaluation.runner import eval_main, evaluate, evaluate_file, load_task_samples, write_results
from taid_vlm.evaluation.tasks import DEFAULT_PROMPTS, TASKS

__all__ = [
    "DEFAULT_PROMPTS",
    "TASKS",
    "compare_main",
    "compare_results",
    "eval_main",
    "evaluate",
    "evaluate_file",
    "load_task_samples",
    "write_results",
]
