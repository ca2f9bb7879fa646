"""Applications built on dashvl (``python -m apps.halting_viewer``)."""
