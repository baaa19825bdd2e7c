"""Evaluation with lm-eval (in-process HFLM, offline): the shipped ``pai_tiny_mc`` task, cmmlu and ceval-valid.

The public entry point is :func:`pai_patch.evaluation.runner.evaluate`; ``python -m pai_patch eval``
is its command line (:mod:`pai_patch.evaluation.cli`).
"""
