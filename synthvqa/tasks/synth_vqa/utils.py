"""synth_vqa_<family>: one question family of synthvqa.suite per task, exact match after normalising."""
from synthvqa import suite as synth
from synthvqa.docs import synth_docs

__all__ = ["process_docs", "doc_to_visual", "doc_to_text", "process_results"]


def process_docs(manifest):
    """The manifest's one row ``{split, rows, family}`` -> that many rows of the family (cached on disk)."""
    spec = manifest[0]
    return synth_docs("vqa", spec["split"], spec["rows"], family=spec["family"])


def doc_to_visual(doc):
    return [doc["image"].convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    kw = lmms_eval_specific_kwargs or {}
    return f"{kw.get('pre_prompt', '')}{doc['question']}{kw.get('post_prompt', '')}"


def process_results(doc, results):
    """The bundled models' own scoring (model cards, synthvqa/reports/accuracy.py): ``synthvqa.suite.is_correct``."""
    return {"exact_match": float(synth.is_correct(results[0], doc["answers"]))}
