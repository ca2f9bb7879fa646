"""synth_mme: lmms-eval's MME functions over ``synthvqa.suite.mme_rows`` (Yes/No pairs sharing an image)."""
from lmms_eval.tasks.mme.utils import mme_aggregate_results, mme_doc_to_text, mme_doc_to_visual, mme_process_results

from synthvqa.docs import synth_docs

__all__ = ["process_docs", "mme_doc_to_visual", "mme_doc_to_text", "mme_process_results", "mme_aggregate_results"]


def process_docs(manifest):
    """The manifest's one row ``{split, rows}`` -> that many rows in the ``mme`` schema (cached on disk)."""
    spec = manifest[0]
    return synth_docs("mme", spec["split"], spec["rows"])
