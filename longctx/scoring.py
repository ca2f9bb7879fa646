"""RULER's metrics: a prediction scores by which gold strings it contains (case-insensitive), in percent."""
from __future__ import annotations

import re

__all__ = ["METRICS", "string_match_all", "string_match_part", "score", "clean"]

_NONPRINTABLE = re.compile(r"[\x00-\x1f]")


def clean(prediction: str) -> str:
    """RULER's post-processing: control characters (newlines too) become spaces; stripped."""
    return _NONPRINTABLE.sub(" ", prediction).strip()


def string_match_all(prediction: str, answers) -> float:
    """The share of gold answers found in the prediction, 0..100 (all must appear for 100)."""
    pred = clean(prediction).lower()
    return 100.0 * sum(a.lower() in pred for a in answers) / len(answers)


def string_match_part(prediction: str, answers) -> float:
    """100 if any gold answer appears in the prediction, else 0 (QA: any accepted form is enough)."""
    pred = clean(prediction).lower()
    return 100.0 * any(a.lower() in pred for a in answers)


METRICS = {"all": string_match_all, "part": string_match_part}


def score(metric: str, prediction: str, answers) -> float:
    """``METRICS[metric](prediction, answers)``; ValueError naming the metrics for an unknown one."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {tuple(METRICS)}; got {metric!r}")
    if not answers:
        raise ValueError("a sample needs at least one gold answer")
    return METRICS[metric](prediction, answers)
