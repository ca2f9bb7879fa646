"""synth_vqa_<family>: one question family of dashvl.synth per task, exact match after normalising."""
from dashvl.lmms import synth_docs

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


def normalise(text: str) -> str:
    """The bundled models' scoring (bench/train_synth.py): surrounding spaces and full stops off, lower case."""
    return text.strip().strip(".").strip().lower()


def process_results(doc, results):
    return {"exact_match": float(normalise(results[0]) in {normalise(a) for a in doc["answers"]})}
