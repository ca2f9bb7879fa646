"""synth_textvqa: lmms-eval's TextVQA functions over ``synthvqa.suite.textvqa_rows``."""
from lmms_eval.tasks.textvqa.utils import textvqa_doc_to_text, textvqa_doc_to_visual, textvqa_process_results

from synthvqa.docs import synth_docs

__all__ = ["process_docs", "textvqa_doc_to_visual", "textvqa_doc_to_text", "process_results"]


def process_docs(manifest):
    """The manifest's one row ``{split, rows}`` -> that many rows in the ``textvqa_val`` schema (cached on disk)."""
    spec = manifest[0]
    return synth_docs("textvqa", spec["split"], spec["rows"])


def process_results(doc, results):
    """TextVQA's VQA accuracy; its submission file (for the test server) is left out."""
    return {"exact_match": textvqa_process_results(doc, results)["exact_match"]}
