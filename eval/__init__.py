"""The lmms-eval bridge: ``python eval/run.py`` (see README.md here)."""
