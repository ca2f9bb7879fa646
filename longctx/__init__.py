"""longctx: a RULER-style long-context suite built offline, and a harness that runs it under dashvl settings.

    from longctx import build_suite, TASKS, SUITE_VERSION
    samples = build_suite(tokenizer, ["niah_single_1", "vt"], lengths=(1024, 2048), n_per_task=5)

``python -m longctx.evaluate --help`` runs it on a model.
"""
from .scoring import score
from .tasks import DEFAULT_LENGTHS, SUITE_VERSION, TASKS, Sample, build_sample, build_suite

__all__ = ["SUITE_VERSION", "TASKS", "DEFAULT_LENGTHS", "Sample", "build_sample", "build_suite", "score"]
