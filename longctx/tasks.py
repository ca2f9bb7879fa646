"""The suite: RULER's task set, built offline, sized in a given tokenizer's tokens.

``build_sample("niah_single_2", 4096, 0, tokenizer)`` gives a ``Sample`` whose prompt (chat-formatted when
the tokenizer has a chat template) plus its generation budget fills 4,096 tokens. A sample is a function of
(SUITE_VERSION, task, length, index, tokenizer) only: the same on every run and machine.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import random
from typing import Callable

from . import generators as g

__all__ = ["SUITE_VERSION", "TASKS", "DEFAULT_LENGTHS", "Task", "Sample", "build_sample", "build_suite",
           "count_tokens"]

# Bump whenever a generator, template, vocabulary or task option changes: results of two versions differ.
SUITE_VERSION = "longctx-1"
DEFAULT_LENGTHS = (1024, 2048, 4096, 8192)

_NIAH = ("Some special magic {kind} are hidden within the following text. Make sure to memorize it. I will quiz "
         "you about the {kind} afterwards.\n{context}\nWhat are all the special magic {kind} for {query} mentioned "
         "in the provided text?")
_NIAH_PREFIX = "The special magic {kind} for {query} mentioned in the provided text are"
_VT = ("Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
       "Question: Find all variables that are assigned the value {query} in the text above.")
_VT_PREFIX = ("Answer: According to the chain(s) of variable assignment in the text above, 5 variables are assigned "
              "the value {query}, they are:")
_CWE = ("Below is a numbered list of words. In these words, some appear more often than others. Memorize the ones "
        "that appear most often.\n{context}\nQuestion: What are the 10 most common words in the above list?")
_CWE_PREFIX = "Answer: The top 10 words that appear most often in the list are:"
_FWE = ("Read the following coded text and track the frequency of each coded word. Find the three most frequently "
        "appeared coded words. {context}\nQuestion: Do not provide any explanation. What are the three most "
        "frequently appeared words in the above coded text?")
_FWE_PREFIX = "Answer: According to the coded text above, the three most frequently appeared words are:"
_QA = ("Answer the question based on the given documents. Only give me the answer and do not output any other "
       "words.\n\nThe following are given documents.\n\n{context}\n\nAnswer the question based on the given "
       "documents. Only give me the answer and do not output any other words.\n\nQuestion: {query}")
_QA_PREFIX = "Answer:"


@dataclasses.dataclass(frozen=True)
class Task:
    """One task: a generator with fixed options, its template, metric and generation budget.

    Attributes:
        generate: ``(rng, n, **options) -> generators.Parts``.
        options: keyword options of ``generate``; ``by_length`` may override them per target length.
        metric: a key of ``scoring.METRICS``.
        max_new_tokens: generation budget (RULER's tokens_to_generate, shortened where answers are short).
    """

    generate: Callable
    template: str
    prefix: str
    metric: str
    max_new_tokens: int
    options: dict = dataclasses.field(default_factory=dict)
    by_length: Callable | None = None

    def options_for(self, length: int) -> dict:
        return {**self.options, **(self.by_length(length) if self.by_length else {})}


def _niah(kind="numbers", new=32, **options):
    template = _NIAH.replace("{kind}", kind)
    return Task(g.niah, template, _NIAH_PREFIX.replace("{kind}", kind), "all", new,
                {"values": kind, **options})


def _cwe_counts(length: int) -> dict:
    # RULER's 30 / 3 repetitions leave no room for other words below 4k tokens
    return {"freq_common": 30, "freq_uncommon": 3} if length >= 4096 else {"freq_common": 10, "freq_uncommon": 2}


TASKS = {
    "niah_single_1": _niah(haystack="noise"),
    "niah_single_2": _niah(haystack="essay"),
    "niah_single_3": _niah("uuids", 64, haystack="essay"),
    "niah_multikey_1": _niah(haystack="essay", num_keys=4),
    "niah_multikey_2": _niah(haystack="needles"),
    "niah_multikey_3": _niah("uuids", 64, haystack="needles", keys="uuids"),
    "niah_multivalue": _niah(new=64, haystack="essay", num_values=4),
    "niah_multiquery": _niah(new=64, haystack="essay", num_keys=4, num_queries=4),
    "vt": Task(g.variable_tracking, _VT, _VT_PREFIX, "all", 30),
    "cwe": Task(g.common_words, _CWE, _CWE_PREFIX, "all", 120, by_length=_cwe_counts),
    "fwe": Task(g.frequent_words, _FWE, _FWE_PREFIX, "all", 50),
    "qa_1": Task(g.qa_single, _QA, _QA_PREFIX, "part", 32),
    "qa_2": Task(g.qa_two_hop, _QA, _QA_PREFIX, "part", 32),
}


@dataclasses.dataclass(frozen=True)
class Sample:
    """One prompt and what a correct answer contains.

    Attributes:
        prompt: the text to encode with ``tokenizer(prompt, add_special_tokens=add_special_tokens)``; ends
            with the task's answer prefix, after the assistant turn's start when chat-formatted.
        tokens: the prompt's length in tokens; ``tokens + max_new_tokens <= length``.
        n: the generator's size knob that gave this length.
    """

    task: str
    length: int
    index: int
    prompt: str
    add_special_tokens: bool
    answers: tuple[str, ...]
    metric: str
    max_new_tokens: int
    tokens: int
    n: int


def _seed(task: str, length: int, index: int) -> int:
    # hashlib, not hash(): Python salts str hashes per process
    digest = hashlib.sha256(f"{SUITE_VERSION}|{task}|{length}|{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _format(tokenizer, task: Task, parts: g.Parts, chat: bool) -> str:
    user = task.template.format(context=parts.context, query=parts.query)
    prefix = task.prefix.format(query=parts.query)
    if not chat:
        return f"{user}\n{prefix}"
    head = tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)
    return head + prefix


def count_tokens(tokenizer, text: str, add_special_tokens: bool) -> int:
    return len(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


def build_sample(task_name: str, length: int, index: int, tokenizer, chat: bool | None = None) -> Sample:
    """The ``index``-th sample of a task at ``length`` tokens (prompt + generation budget).

    Args:
        chat: format with the tokenizer's chat template; None: when it has one.
    Raises:
        ValueError: an unknown task, or a length too short to hold the task's smallest prompt.
    """
    if task_name not in TASKS:
        raise ValueError(f"unknown task {task_name!r}; known: {', '.join(TASKS)}")
    task = TASKS[task_name]
    chat = bool(getattr(tokenizer, "chat_template", None)) if chat is None else chat
    special = not chat  # a chat template writes its own special tokens
    budget = length - task.max_new_tokens
    options = task.options_for(length)
    seed = _seed(task_name, length, index)

    @functools.lru_cache(maxsize=None)
    def make(n: int):
        parts = task.generate(random.Random(seed), n, **options)
        text = _format(tokenizer, task, parts, chat)
        return count_tokens(tokenizer, text, special), text, parts

    n = _largest_fitting(lambda n: make(n)[0], budget)
    if n is None:
        raise ValueError(f"{task_name} needs more than {length} tokens even at its smallest "
                         f"({make(1)[0]} prompt + {task.max_new_tokens} generated); ask a longer length")
    tokens, text, parts = make(n)
    return Sample(task_name, length, index, text, special, parts.answers, task.metric, task.max_new_tokens, tokens, n)


def _largest_fitting(count, budget: int) -> int | None:
    """The largest n >= 1 with count(n) <= budget (count grows with n), or None. A linear guess from two
    probes, then bisection inside a bracket around it: about ten counts instead of twenty."""
    if count(1) > budget:
        return None
    probe = 16
    slope = max((count(probe) - count(1)) / (probe - 1), 1e-3)
    guess = max(1, int(1 + (budget - count(1)) / slope))
    lo, hi = max(1, int(guess * 0.9)), int(guess * 1.1) + 2
    while lo > 1 and count(lo) > budget:
        lo = max(1, lo // 2)
    while count(hi) <= budget:
        lo, hi = hi, hi * 2
    while hi - lo > 1:  # invariant: count(lo) <= budget < count(hi)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count(mid) <= budget else (lo, mid)
    return lo


def build_suite(tokenizer, task_names=None, lengths=DEFAULT_LENGTHS, n_per_task: int = 10, chat: bool | None = None,
                progress: bool = False) -> list[Sample]:
    """Samples 0..n_per_task-1 of every task at every length, in (length, task, index) order."""
    task_names = list(TASKS) if task_names is None else list(task_names)
    unknown = [t for t in task_names if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; known: {', '.join(TASKS)}")
    keys = [(L, t, i) for L in lengths for t in task_names for i in range(n_per_task)]
    if progress:
        from tqdm.auto import tqdm
        keys = tqdm(keys, desc="building prompts", unit="sample")
    return [build_sample(t, L, i, tokenizer, chat) for L, t, i in keys]
