"""Benchmarks, graders and reports for steered generation, independent of the engine that samples.

tasks (problems and prompts) -> chat (rendered prompt ids) -> runner (requests to an injected `generate`,
grading, a resumable store) -> report (summary.json, report.md, plots).
"""

from sae_jax.evals.chat import TEMPLATES, default_stop, encode, render, think_end_id
from sae_jax.evals.graders import GpqaLetter, MathVerify, ReferenceGpqa, ReferenceMath, Verdict, default_graders
from sae_jax.evals.judge import Judge
from sae_jax.evals.report import PAPER, summarize, write_report
from sae_jax.evals.runner import BASELINE, Completion, SamplingConfig, Request, Setting, regrade, run_eval, sample_seed
from sae_jax.evals.store import SampleStore
from sae_jax.evals.tasks import TASKS, Problem, load_task

__all__ = [
  "BASELINE", "Completion", "SamplingConfig", "GpqaLetter", "Judge", "MathVerify", "PAPER", "Problem", "ReferenceGpqa",
  "ReferenceMath", "Request", "SampleStore", "Setting", "TASKS", "TEMPLATES", "Verdict", "default_graders",
  "default_stop", "encode", "load_task", "regrade", "render", "run_eval", "sample_seed", "summarize", "think_end_id",
  "write_report",
]
