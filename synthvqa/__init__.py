"""The synthetic visual-QA world of dashvl's bundled models, kept apart from the library.

- ``suite``: the seeded generator (coloured shapes and words on textured backgrounds, six question families)
  and its answer check;
- ``docs``: its rows as cached ``datasets`` for lmms-eval; ``tasks/``: the lmms-eval tasks over them
  (``synth_mme``, ``synth_textvqa``, ``synth_vqa``), found by ``eval/run.py`` through ``TASKS_DIR``;
- ``evaluate``: a model's accuracy per question family;
- ``train``: how ``assets/models/qwen2-vl-synth`` and ``llava-synth`` were trained (``python -m synthvqa.train``);
- ``reports``: the accuracy tables of those models under DASH and its rivals (``make accuracy``).

The models themselves stay in ``assets/models/`` (data, loaded by ``dashvl.load_model``).
"""
from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent / "tasks"

__all__ = ["TASKS_DIR"]
