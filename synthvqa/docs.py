"""The synthetic suite's rows as ``datasets.Dataset`` objects for lmms-eval's tasks, cached on disk.

The task folders under ``synthvqa/tasks/`` hold one-line manifests; their ``process_docs`` call ``synth_docs``.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["cache_dir", "synth_docs"]


def cache_dir() -> Path:
    """Where the synth tasks' datasets are kept: ``$DASHVL_CACHE`` or ``~/.cache/dashvl``."""
    root = os.environ.get("DASHVL_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "dashvl")
    return Path(root).expanduser()


_SCHEMAS = {"mme": "mme_rows", "textvqa": "textvqa_rows", "vqa": "vqa_rows"}


def synth_docs(kind: str, split: str = "test", n: int = 200, family: str | None = None):
    """``n`` rows of ``synthvqa.suite`` in lmms-eval's ``mme`` or ``textvqa_val`` schema, or one ``family``'s
    rows for ``synth_vqa_<family>`` (kind ``"vqa"``), as a ``datasets.Dataset``.

    Built on first use and saved under ``cache_dir()/synth_tasks``; the folder name carries a hash of
    ``synthvqa/suite.py``, so a changed generator builds afresh. Safe with several processes (a file lock).
    """
    import datasets
    from filelock import FileLock

    from . import suite as synth

    if kind not in _SCHEMAS:
        raise ValueError(f"kind must be one of {tuple(_SCHEMAS)}; got {kind!r}")
    if (kind == "vqa") != (family is not None):
        raise ValueError(f"family is needed for kind 'vqa' and only there; got kind {kind!r}, family {family!r}")
    if family is not None and family not in synth.FAMILIES:
        raise ValueError(f"family must be one of {synth.FAMILIES}; got {family!r}")
    digest = hashlib.sha256(Path(synth.__file__).read_bytes()).hexdigest()[:12]
    path = cache_dir() / "synth_tasks" / f"{kind}{'-' + family if family else ''}-{split}-{n}-{digest}"
    if not (path / "dataset_info.json").exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            if not (path / "dataset_info.json").exists():
                rows = getattr(synth, _SCHEMAS[kind])(split, n, *([family] if family else []))
                if kind == "mme":
                    features = datasets.Features({"question_id": datasets.Value("string"), "image": datasets.Image(),
                                                  "question": datasets.Value("string"),
                                                  "answer": datasets.Value("string"),
                                                  "category": datasets.Value("string")})
                else:  # textvqa, and vqa with the family beside it
                    features = datasets.Features({"question_id": datasets.Value("int64"), "image": datasets.Image(),
                                                  "question": datasets.Value("string"),
                                                  "answers": datasets.Sequence(datasets.Value("string")),
                                                  **({"family": datasets.Value("string")} if family else {})})
                tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
                datasets.Dataset.from_list(rows, features=features).save_to_disk(str(tmp))
                os.replace(tmp, path)
    return datasets.load_from_disk(str(path))
