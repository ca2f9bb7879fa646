"""Greedy answers of a model to the suite's test questions, accuracy per family (the model cards' numbers)."""
from __future__ import annotations

import json

import torch

from . import suite as synth
from .train.data import worker_init
from .train.questions import prompt_for

__all__ = ["evaluate"]

@torch.no_grad()
def evaluate(model, processor, per_family: int, batch: int = 250, workers: int = 4, device: str = "cpu",
             log=print, every_answer: bool = False, on_batch=None) -> dict:
    """Greedy answers to ``per_family`` test questions of every family: accuracy per family and examples (the first
    24 and up to 36 wrong ones; with ``every_answer``, all). ``on_batch(inputs)``: called after each batch's
    generate (e.g. to read a compressed model's trace of that prefill)."""
    samples_ds = _TestSamples(per_family)
    loader = torch.utils.data.DataLoader(samples_ds, batch_size=batch, num_workers=workers, collate_fn=list,
                                         worker_init_fn=worker_init)
    correct = {f: 0 for f in synth.FAMILIES}
    total = {f: 0 for f in synth.FAMILIES}
    examples = []
    model.eval()
    for samples in loader:
        enc = processor(text=[prompt_for(processor, s.question) for s in samples], images=[s.image for s in samples],
                        return_tensors="pt", padding=True).to(device)
        out = model.generate(**enc, max_new_tokens=6, do_sample=False)
        if on_batch is not None:
            on_batch(enc)
        texts = processor.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        for s, t in zip(samples, texts):
            ok = synth.is_correct(t, s.answers)
            correct[s.family] += ok
            total[s.family] += 1
            if every_answer or len(examples) < 24 or not ok and len(examples) < 60:
                examples.append({"id": s.id, "question": s.question, "answer": s.answer, "generated": t, "ok": ok})
    acc = {f: correct[f] / total[f] for f in synth.FAMILIES}
    log("accuracy " + json.dumps({f: round(a, 4) for f, a in acc.items()}))
    return {"accuracy": acc, "n": total, "examples": examples}


class _TestSamples(torch.utils.data.Dataset):
    def __init__(self, per_family: int):
        self.n = per_family * len(synth.FAMILIES)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return synth.make_sample("test", synth.FAMILIES[i % len(synth.FAMILIES)], i // len(synth.FAMILIES))
