"""Evaluation: CER/NED, KIE field and document accuracy, TEDS, ... of a model, before vs after.

``evaluate(model_dir, data, out_dir=...)`` runs and scores a model (and a baseline);
``evaluate_predictions(pred, data, out_dir=...)`` scores saved predictions; ``summary(metrics)``
formats the before/after numbers for a terminal. Scoring functions are in :mod:`.metrics`.
"""

from paddle_ocrvl_sft.evaluate.runner import evaluate, evaluate_predictions, summary

__all__ = ["evaluate", "evaluate_predictions", "summary"]
