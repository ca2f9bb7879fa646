"""The synthetic visual-QA suite: determinism, disjoint splits, schemas, balance, answers that match the drawing."""
import hashlib
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from synthvqa import suite as synth
from synthvqa.suite import COLOURS, FAMILIES, POSITIONS, SHAPES, WORDS, make_split, mme_rows, textvqa_rows


def _digest(img: Image.Image) -> str:
    return hashlib.sha1(img.tobytes() + repr(img.size).encode()).hexdigest()


@pytest.fixture(scope="module")
def test_split():
    return make_split("test", 120)


def test_deterministic_and_prefix_stable(test_split):
    again = make_split("test", 60)
    for a, b in zip(test_split, again):
        assert (a.id, a.question, a.answer, a.pair_id) == (b.id, b.question, b.answer, b.pair_id)
        assert _digest(a.image) == _digest(b.image)


def test_splits_are_disjoint(test_split):
    seen = {_digest(s.image) for s in test_split}
    for split in ("train", "val"):
        other = make_split(split, 60)
        assert not seen & {_digest(s.image) for s in other}
        assert not {s.id for s in test_split} & {s.id for s in other}


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        make_split("dev", 3)
    with pytest.raises(ValueError, match="families"):
        make_split("train", 3, families=("colour", "smell"))
    with pytest.raises(ValueError, match="even"):
        mme_rows("test", 3)


def test_schema_and_varied_images(test_split):
    assert [s.family for s in test_split[:6]] == list(FAMILIES)
    sizes = set()
    for s in test_split:
        assert isinstance(s, synth.Sample) and s.image.mode == "RGB"
        w, h = s.image.size
        assert synth.MIN_SIDE <= w <= synth.MAX_SIDE and synth.MIN_SIDE <= h <= synth.MAX_SIDE
        sizes.add((w, h))
        assert s.question.endswith("?") and s.answer in s.answers
        assert len(s.answers) == (10 if s.family == "reading" else 1)
        assert (s.pair_id is not None) == (s.family == "existence")
    assert len(sizes) > 100  # sizes and aspect ratios vary
    with pytest.raises(Exception):
        test_split[0].answer = "x"  # frozen


def test_answer_sets_and_balance():
    by_family = {f: make_split("val", 48, families=(f,)) for f in FAMILIES}
    assert Counter(s.answer for s in by_family["existence"]) == {"Yes": 24, "No": 24}
    assert {s.answer for s in by_family["colour"]} <= set(COLOURS)
    assert {s.answer for s in by_family["shape"]} <= set(SHAPES)
    assert Counter(s.answer for s in by_family["count"]) == {str(n): 8 for n in range(1, 7)}
    assert Counter(s.answer for s in by_family["position"]) == {p: 12 for p in POSITIONS}
    assert {s.answer for s in by_family["reading"]} <= set(WORDS)
    # no question may be answerable from its text: the same question text gets different answers
    for f in FAMILIES:
        answers_by_question = {}
        for s in by_family[f]:
            answers_by_question.setdefault(s.question, set()).add(s.answer)
        assert max(len(a) for a in answers_by_question.values()) > 1, f
    for f in ("colour", "shape", "count", "reading"):
        assert all(f" {s.answer}?" not in s.question and f" {s.answer} " not in s.question for s in by_family[f])


def test_existence_pairs_share_the_image():
    rows = make_split("test", 10, families=("existence",))
    for yes, no in zip(rows[0::2], rows[1::2]):
        assert yes.pair_id == no.pair_id and (yes.answer, no.answer) == ("Yes", "No")
        assert _digest(yes.image) == _digest(no.image) and yes.question != no.question


def _palette_pixels(img: Image.Image, box, colour) -> int:
    arr = np.asarray(img)[box[1]:box[3] + 1, box[0]:box[2] + 1]
    return int((arr == np.array(COLOURS[colour], np.uint8)).all(-1).sum())


@pytest.mark.parametrize("family", FAMILIES)
def test_answers_match_what_was_drawn(family):
    for k in range(24):
        scene, question, answer = synth._build("test", family, k)
        objs = [(c, s) for c, s, _ in scene.objects]
        for c, s, box in scene.objects:  # every recorded shape is visible in its colour
            assert _palette_pixels(scene.img, box, c) > 0.25 * (box[2] - box[0]) ** 2
        if family == "existence":
            c, s = question.split(" in the image")[0].split()[-2:]
            assert ((c, s) in objs) == (answer == "Yes")
        elif family == "colour":
            shape = question.split("the ")[1].rstrip("?")
            assert [c for c, s in objs if s == shape] == [answer]
        elif family == "shape":
            colour = question.split("the ")[1].split()[0]
            assert [s for c, s in objs if c == colour] == [answer]
        elif family == "count":
            assert len(objs) == int(answer)
        elif family == "position":
            c, s = question.split("Is the ")[1].split()[:2]
            (box,) = [b for c2, s2, b in scene.objects if (c2, s2) == (c, s)]
            cx, cy = (box[0] + box[2]) / 2 / scene.w, (box[1] + box[3]) / 2 / scene.h
            horizontal = abs(cx - 0.5) > abs(cy - 0.5)
            assert answer == (("left" if cx < 0.5 else "right") if horizontal else ("top" if cy < 0.5 else "bottom"))
        else:
            assert [w for w, _ in scene.words] == [answer]


def test_lmms_eval_rows():
    rows = mme_rows("test", 8)
    assert all(set(r) == {"question_id", "image", "question", "answer", "category"} for r in rows)
    assert [r["answer"] for r in rows] == ["Yes", "No"] * 4
    assert all(r["question_id"] == rows[2 * (i // 2)]["question_id"] for i, r in enumerate(rows))
    assert len({r["question_id"] for r in rows}) == 4 and rows[0]["question"].endswith("Please answer yes or no.")
    assert all(r["category"] == "existence" and isinstance(r["image"], Image.Image) for r in rows)
    tv = textvqa_rows("test", 5)
    assert all(set(r) == {"question_id", "image", "question", "answers"} for r in tv)
    assert all(len(r["answers"]) == 10 and all(isinstance(a, str) for a in r["answers"]) for r in tv)
    assert [r["answers"][0] for r in tv] == [s.answer for s in make_split("test", 5, families=("reading",))]


@pytest.mark.parametrize("kind,family,message", [
    ("vqa", None, "family is needed for kind 'vqa'"),
    ("mme", "colour", "family is needed for kind 'vqa' and only there"),
    ("vqa", "weather", r"family must be one of \('existence'"),
    ("gqa", None, r"kind must be one of \('mme', 'textvqa', 'vqa'\)"),
])
def test_synth_docs_refuses_bad_kinds_and_families(kind, family, message):
    from synthvqa.docs import synth_docs

    with pytest.raises(ValueError, match=message):
        synth_docs(kind, "test", 2, family=family)


def test_is_correct_trims_spaces_full_stops_and_case():
    assert synth.is_correct(" Blue.", ["blue"]) and synth.is_correct("STOP", ["x", "stop"])
    assert not synth.is_correct("blue sky", ["blue"])
