"""What a training image is asked: the families' mix per round, every question a scene settles, answer tokens."""
from __future__ import annotations

from dashvl.models import chat_prompt

from .. import suite as synth

__all__ = ["ROUND", "parse_mix", "prompt_for", "answer_ids", "absent_pair", "existence_question", "extra_questions"]

# Training mix per round: the harder families more often.
ROUND = ("existence", "existence", "colour", "shape", "count", "count", "position", "position", "reading", "reading")


def parse_mix(spec: str | None) -> tuple[str, ...]:
    """``"existence=2,colour=1,...,reading=6"`` -> a round of families (``ROUND``'s order, each repeated its count);
    families left out keep their count in ``ROUND``. None or "" -> ``ROUND``."""
    if not spec:
        return ROUND
    counts = {f: ROUND.count(f) for f in synth.FAMILIES}
    for part in spec.split(","):
        f, _, n = part.partition("=")
        if f.strip() not in counts or not n.strip().isdigit():
            raise ValueError(f"--mix wants family=count,... with families from {synth.FAMILIES}; got {part!r}")
        counts[f.strip()] = int(n)
    if not any(counts.values()):
        raise ValueError("--mix: every family has count 0")
    return tuple(f for f in synth.FAMILIES for _ in range(counts[f]))


def prompt_for(processor, question: str) -> str:
    return chat_prompt(processor, question)


def answer_ids(processor, answer: str) -> list[int]:
    """The tokens the model is trained to generate after the prompt: the answer and the end-of-turn token."""
    tok = processor.tokenizer
    lead = " " if tok.bos_token == "<s>" else ""  # LLaVA answers follow "ASSISTANT:" after a space
    return tok(lead + answer, add_special_tokens=False).input_ids + [tok.eos_token_id]


def _unique(items):
    return [x for x in items if items.count(x) == 1]


def absent_pair(objs, c: str, s: str, rng, hard_no: float = 0.0):
    """A (colour, shape) not among ``objs`` that shares the colour or the shape of the drawn (``c``, ``s``), as the
    suite's No questions do. With probability ``hard_no`` it shares the colour (when one exists): only the shape then
    tells it apart. None if every such pair is drawn."""
    same_shape = [(c2, s) for c2 in synth.COLOURS if (c2, s) not in objs]
    same_colour = [(c, s2) for s2 in synth.SHAPES if (c, s2) not in objs]
    if same_colour and rng.random() < hard_no:
        return rng.choice(same_colour)
    pool = same_shape + same_colour
    return rng.choice(pool) if pool else None


def existence_question(c: str, s: str) -> str:
    return f"Is there {synth._a(c)} {c} {s} in the image?"


def extra_questions(scene, rng, hard_no: float = 0.0) -> list[tuple[str, str]]:
    """Every other question of the suite's families that ``scene`` (what ``synth._build`` drew) settles; its No
    existence question shares the present object's colour with probability ``hard_no`` (see ``absent_pair``)."""
    objs = [(c, s) for c, s, _ in scene.objects]
    out = []
    if objs:
        c, s = rng.choice(objs)
        out.append((existence_question(c, s), "Yes"))
        absent = absent_pair(objs, c, s, rng, hard_no)
        if absent:
            out.append((existence_question(*absent), "No"))
    for shape in _unique([s for _, s in objs]):
        out.append((f"What colour is the {shape}?", next(c for c, s in objs if s == shape)))
    for colour in _unique([c for c, _ in objs]):
        out.append((f"What shape is the {colour} object?", next(s for c, s in objs if c == colour)))
    if 1 <= len(objs) <= 6:
        out.append(("How many shapes are in the image?", str(len(objs))))
    for c, s, box in scene.objects:
        if objs.count((c, s)) != 1:
            continue
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        for pos in synth.POSITIONS:
            (x0, x1), (y0, y1) = synth._region(pos, scene.w, scene.h)
            if x0 <= cx <= x1 and y0 <= cy <= y1:
                out.append((f"Is the {c} {s} on the left, right, top or bottom of the image?", pos))
    if len(scene.words) == 1:
        out.append(("What word is written in the image?", scene.words[0][0]))
    return out


_LETTER_EDGES: dict[str, list[float]] = {}
