"""Context generators, RULER-style: ``gen(rng, n, **options) -> Parts``.

``n`` is the size knob (haystack sentences, needles, documents, words) that ``tasks.build_sample`` searches
so the prompt lands on a token budget. Every random choice that does not depend on ``n`` is drawn first, so
larger ``n`` only adds material (the token count grows with ``n``, which the search relies on).
"""
from __future__ import annotations

import random
import string
from typing import NamedTuple

from .words import ADJECTIVES, NOUNS, PLACES, SYLLABLES, VERBS, VOCABULARY, WORDS, pseudo_word

__all__ = ["Parts", "niah", "variable_tracking", "common_words", "frequent_words", "qa_single", "qa_two_hop"]

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."


class Parts(NamedTuple):
    """One sample's filled-in template fields and gold answers."""

    context: str
    query: str
    answers: tuple[str, ...]


def _number(rng: random.Random) -> str:
    return str(rng.randint(1_000_000, 9_999_999))


def _uuid(rng: random.Random) -> str:
    h = "%032x" % rng.getrandbits(128)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _word_key(rng: random.Random) -> str:
    return f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}"


def _name(rng: random.Random, syllables: int = 3) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(syllables)).capitalize()


def _distinct(draw, k: int, taken: set) -> list[str]:
    out = []
    while len(out) < k:
        x = draw()
        if x not in taken:
            taken.add(x)
            out.append(x)
    return out


def _essay_sentence(rng: random.Random) -> str:
    a, b = rng.sample(NOUNS, 2)
    return (f"The {rng.choice(ADJECTIVES)} {a} {rng.choice(VERBS)} the {rng.choice(ADJECTIVES)} {b} "
            f"near the {rng.choice(PLACES)}.")


def _insert(units: list[str], items: list[str], depths: list[float]) -> list[str]:
    """``items`` placed at fractions ``depths`` of ``units`` (later items after earlier ones at equal spots)."""
    out = list(units)
    for _, _, item, depth in sorted(((d, i, item, d) for i, (item, d) in enumerate(zip(items, depths))), reverse=True):
        out.insert(round(depth * len(units)), item)
    return out


def niah(rng: random.Random, n: int, haystack: str = "essay", keys: str = "words", values: str = "numbers",
         num_keys: int = 1, num_values: int = 1, num_queries: int = 1) -> Parts:
    """Needle(s) in a haystack. ``num_keys`` needles with distinct keys (the first ``num_queries`` asked),
    the first key holding ``num_values`` values; ``haystack``: "noise", "essay" or "needles" (``n`` more
    distractor needles). The answers are the asked keys' values."""
    draw_key = {"words": lambda: _word_key(rng), "numbers": lambda: _number(rng), "uuids": lambda: _uuid(rng)}[keys]
    draw_value = {"numbers": lambda: _number(rng), "uuids": lambda: _uuid(rng)}[values]
    kind = "numbers" if values == "numbers" else "uuids"
    taken: set = set()
    key_list = _distinct(draw_key, num_keys, taken)
    needles, answers = [], []
    for i, key in enumerate(key_list):
        for _ in range(num_values if i == 0 else 1):
            value = draw_value()
            needles.append(f"One of the special magic {kind} for {key} is: {value}.")
            if i < num_queries:
                answers.append(value)
    depths = [rng.random() for _ in needles]
    if haystack == "noise":
        units = [NOISE] * n
    elif haystack == "essay":
        units = [_essay_sentence(rng) for _ in range(n)]
    elif haystack == "needles":
        units = [f"One of the special magic {kind} for {k} is: {draw_value()}."
                 for k in _distinct(draw_key, n, taken)]
    else:
        raise ValueError(f"haystack must be 'noise', 'essay' or 'needles'; got {haystack!r}")
    asked = key_list[:num_queries]
    query = asked[0] if len(asked) == 1 else ", ".join(asked[:-1]) + " and " + asked[-1]
    return Parts(" ".join(_insert(units, needles, depths)), query, tuple(answers))


def variable_tracking(rng: random.Random, n: int, hops: int = 4, chains: int = 1) -> Parts:
    """Chains ``VAR A = 12345``, ``VAR B = VAR A``, ... in ``n`` noise sentences; the answers are the
    variables of the first chain (all of which hold its value)."""
    names = _distinct(lambda: "".join(rng.choice(string.ascii_uppercase) for _ in range(5)), chains * (hops + 1), set())
    statements, first, value0 = [], None, None
    for c in range(chains):
        chain = names[c * (hops + 1):(c + 1) * (hops + 1)]
        value = str(rng.randint(10_000, 99_999))
        statements.append([f"VAR {chain[0]} = {value}."] + [f"VAR {b} = VAR {a}." for a, b in zip(chain, chain[1:])])
        if c == 0:
            first, value0 = chain, value
    items, depths = [], []
    for chain in statements:  # in order within a chain: each assignment after the one it copies
        cuts = sorted(rng.random() for _ in chain)
        items += chain
        depths += cuts
    return Parts(" ".join(_insert([NOISE] * n, items, depths)), value0, tuple(first))


def common_words(rng: random.Random, n: int, num_common: int = 10, freq_common: int = 30,
                 freq_uncommon: int = 3) -> Parts:
    """A numbered list: ``num_common`` words ``freq_common`` times each, ``n`` other words
    ``freq_uncommon`` times each, shuffled. The answers are the common words."""
    real = list(WORDS)
    rng.shuffle(real)
    common, uncommon = real[:num_common], real[num_common:num_common + n]
    if n > len(uncommon):  # past the real words: made-up ones, drawn in a sequence that only grows with n
        uncommon += _distinct(lambda: pseudo_word(rng.randrange(len(WORDS), VOCABULARY)), n - len(uncommon), set(real))
    words = common * freq_common + uncommon * freq_uncommon
    order = random.Random(rng.getrandbits(64)).sample(words, len(words))
    return Parts(" ".join(f"{i + 1}. {w}" for i, w in enumerate(order)), "", tuple(common))


def frequent_words(rng: random.Random, n: int, alpha: float = 2.0, top: int = 3) -> Parts:
    """Coded words with Zipf counts: the word of rank r appears ``floor(a / r**alpha)`` times, a = n + an
    offset that keeps the top ranks' counts distinct. The answers are the ``top`` most frequent words."""
    a = n + int(4 * (top + 1) ** alpha)
    vocab = int(a ** (1 / alpha))
    codes = _distinct(lambda: "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 5))), vocab, set())
    words = [w for r, w in enumerate(codes, 1) for _ in range(int(a / r ** alpha))]
    order = random.Random(rng.getrandbits(64)).sample(words, len(words))
    return Parts(" ".join(order), "", tuple(codes[:top]))


_ATTRIBUTES = ("city", "founder", "product", "year")
_QUESTIONS = {"city": "In which city was {name} founded?", "founder": "Who founded {name}?",
              "product": "What is {name} best known for making?", "year": "In which year was {name} founded?"}


def _company(rng, name, city, founder) -> dict:
    return {"name": name, "city": city, "founder": founder, "product": f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}s",
            "year": str(rng.randint(1801, 1999))}


def _company_doc(c: dict) -> str:
    return (f"{c['name']} is a company founded in {c['year']} in the city of {c['city']}. It is best known for "
            f"making {c['product']}, and its founder is {c['founder']}.")


def qa_single(rng: random.Random, n: int) -> Parts:
    """``n`` + 1 documents about made-up companies; one question about one of them."""
    names = set()
    gold = _company(rng, *_distinct(lambda: _name(rng), 3, names))
    attr = rng.choice(_ATTRIBUTES)
    depth = rng.random()
    docs = [_company_doc(_company(rng, *_distinct(lambda: _name(rng), 3, names))) for _ in range(n)]
    docs = _insert(docs, [_company_doc(gold)], [depth])
    context = "\n\n".join(f"Document {i + 1}:\n{d}" for i, d in enumerate(docs))
    return Parts(context, _QUESTIONS[attr].format(name=gold["name"]), (gold[attr],))


def qa_two_hop(rng: random.Random, n: int) -> Parts:
    """Documents on made-up people (born in a city) and cities (in a country): "In which country was X
    born?" needs the person's document, then the city's. ``n`` distractor pairs."""
    names = set()
    person, city, country = _distinct(lambda: _name(rng), 3, names)
    depths = [rng.random(), rng.random()]
    jobs = ("baker", "painter", "sailor", "teacher", "engineer", "farmer", "doctor", "poet")

    def pair(p, c, k):
        return [f"{p} was born in {c}, and works as a {rng.choice(jobs)}.", f"{c} is a city in the country of {k}."]

    docs = []
    for _ in range(n):
        docs += pair(*_distinct(lambda: _name(rng), 3, names))
    docs = _insert(docs, pair(person, city, country), depths)
    context = "\n\n".join(f"Document {i + 1}:\n{d}" for i, d in enumerate(docs))
    return Parts(context, f"In which country was {person} born?", (country,))
