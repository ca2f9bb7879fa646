"""Training of the bundled models on ``synthvqa.suite``, split by job; ``python -m synthvqa.train`` runs it.

``tokenizer`` (BPE + chat templates), ``architectures`` (the two model builders), ``questions`` (what each image
is asked), ``labels`` (auxiliary targets per visual token), ``data`` (the stream and its collate), ``fast_qwen``
(Qwen2-VL without per-image loops), ``loop`` (the training step), ``card`` (saving, model card).
"""
