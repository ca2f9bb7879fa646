"""The training's own pieces (synthvqa.train): the packed Qwen2-VL training forward must compute
what transformers' stock forward computes, and the reading targets must follow the rendered word."""
import copy
import os

import pytest
import torch

from synthvqa import suite as synth
from synthvqa.train import __main__ as train_cli
from synthvqa.train.data import TrainStream, collate
from synthvqa.train.fast_qwen import qwen_fast_forward, use_packed_vision_attention
from synthvqa.train.labels import cell_labels
from synthvqa.train.questions import ROUND, extra_questions, parse_mix

QWEN = os.path.join(os.path.dirname(__file__), "..", "assets", "models", "qwen2-vl-synth")


def _packed_and_stock(batch, train: bool = False):
    """(packed training forward, transformers' stock forward, the stock model) of qwen2-vl-synth on one collated
    batch, float32."""
    from transformers import AutoModelForImageTextToText

    stock = AutoModelForImageTextToText.from_pretrained(QWEN, dtype=torch.float32)
    stock.config._attn_implementation = "sdpa"
    fast = copy.deepcopy(stock)
    use_packed_vision_attention(fast)
    if train:
        stock.train(), fast.train()
        torch.manual_seed(0)  # dropout is 0 in these configs; seeded anyway
    plain = {k: v for k, v in batch.items() if k not in ("cell_labels", "cell_image", "position_ids",
                                                          "vision_position_ids", "cu_seqlens", "max_seqlen")}
    want = stock(**plain)
    packed = {k: v for k, v in batch.items() if k not in ("cell_labels", "cell_image")}
    packed["max_seqlen"] = int(packed["max_seqlen"])
    return qwen_fast_forward(fast, packed, batch["image_grid_thw"]), want, stock


def test_packed_training_forward_equals_the_stock_forward():
    """One SDPA call over the padded images and worker-side M-RoPE / vision positions against transformers'
    per-image attention and per-row get_rope_index: images of different sizes, float32, training mode."""
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(QWEN)
    ds = TrainStream(proc, length=20, turns=2, positions=True)
    batch = collate([ds[i] for i in (3, 8, 9)], proc.tokenizer.pad_token_id)  # count, reading, reading
    assert len({tuple(g) for g in batch["image_grid_thw"].tolist()}) > 1  # the images differ in size
    got, want, stock = _packed_and_stock(batch, train=True)
    torch.testing.assert_close(got.logits, want.logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(got.loss, want.loss, atol=1e-5, rtol=0)
    pos, _ = stock.model.get_rope_index(batch["input_ids"], batch["mm_token_type_ids"], batch["image_grid_thw"],
                                        attention_mask=batch["attention_mask"])
    assert torch.equal(pos, batch["position_ids"])


def test_letter_targets_spell_the_word_from_left_to_right():
    rows_checked = 0
    for k in range(12):
        scene, _, word = synth._build("train", "reading", k)
        rows, cols = scene.h // 28, scene.w // 28  # Qwen2-VL's merged cells
        lab = cell_labels(scene, rows, cols).view(rows, cols, 4)
        text = word.upper()
        word_cells = lab[..., 2] == synth.WORDS.index(word) + 1
        assert word_cells.any()
        for r in range(rows):
            letters = [chr(int(c) + ord("A") - 1) for c in lab[r, :, 3] if c > 0]
            if not letters:
                continue
            assert word_cells[r].any() and all(ch in text for ch in letters)
            at = [text.index(ch) for ch in dict.fromkeys(letters)]
            assert at == sorted(at), (word, letters)  # left to right, never backwards
            rows_checked += len(at) > 1
        assert not ((lab[..., 3] > 0) & ~word_cells).any()  # letters only on the word's cells
    assert rows_checked >= 12


def test_mix_counts_families_and_names_the_allowed_ones():
    mix = parse_mix("reading=4,colour=3")
    assert mix.count("reading") == 4 and mix.count("colour") == 3 and mix.count("existence") == 2
    assert parse_mix("") == ROUND
    with pytest.raises(ValueError, match="families from"):
        parse_mix("colours=3")
    with pytest.raises(ValueError, match="every family has count 0"):
        parse_mix(",".join(f"{f}=0" for f in synth.FAMILIES))


def test_hard_no_questions_share_the_colour_and_stay_true():
    """--hard-no 1: every training No existence question names a drawn colour with a shape that colour is not
    drawn in, so colour alone cannot answer it; the answers stay right. --hard-no 0 leaves the suite's mix (both
    kinds occur)."""
    import random

    kinds = {0.0: set(), 1.0: set()}
    for hard, seen in kinds.items():
        for k in range(60):
            scene, _, _ = synth._build("train", "existence", k)
            objs = [(c, s) for c, s, _ in scene.objects]
            for q, a in extra_questions(scene, random.Random(k), hard):
                if not q.startswith("Is there"):
                    continue
                c, s = q.split()[3:5]
                assert (a == "Yes") == ((c, s) in objs)
                if a == "No":
                    seen.add("colour" if any(c == o[0] for o in objs) else "shape")
    assert kinds[1.0] == {"colour"} and kinds[0.0] == {"colour", "shape"}


def test_hard_no_redraws_the_own_no_question_of_an_existence_image():
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(QWEN)
    ds = TrainStream(proc, length=40, turns=1, round_=("existence",), hard_no=1.0)
    seen = 0
    for i in range(1, 12, 2):  # odd items: the No question of each pair
        scene, _, a0 = synth._build("train", "existence", i)
        assert a0 == "No"
        objs = [(c, s) for c, s, _ in scene.objects]
        text = proc.tokenizer.decode(ds[i]["input_ids"])
        c, s = text.split("Is there ")[1].split()[1:3]
        assert (c, s) not in objs and any(c == o[0] for o in objs)
        seen += 1
    assert seen == 6


@pytest.mark.parametrize("flag, value, message", [("--hard-no", "1.5", r"--hard-no is a probability in \[0, 1\]"),
                                                  ("--aux-shape", "-1", r"--aux-shape is a loss weight >= 0")])
def test_training_flags_out_of_range_are_refused(tmp_path, capsys, flag, value, message):
    import re

    with pytest.raises(SystemExit):
        train_cli.main(["--model", "llava-synth", "--tiny", "--steps", "1", "--out", str(tmp_path), flag, value])
    assert re.search(message, capsys.readouterr().err)


def test_existence_errors_refuses_no_questions(capsys):
    from synthvqa.reports.existence_errors import main

    with pytest.raises(SystemExit):
        main(["--n", "0"])
    assert "--n must be a positive number of questions; got 0" in capsys.readouterr().err


def test_text_items_mix_into_image_batches():
    """--text-every: a plain text chat (no image) in a batch of image chats; loss only on its answer, and the packed
    training forward still equals the stock one (M-RoPE positions of a text row: one index for all three axes)."""
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(QWEN)
    tok = proc.tokenizer
    prompt = tok("<|im_start|>user\nWhat shape is it?<|im_end|>\n<|im_start|>assistant\n",
                 add_special_tokens=False).input_ids
    answer = tok("circle", add_special_tokens=False).input_ids + [tok.eos_token_id]
    ds = TrainStream(proc, length=20, turns=2, positions=True, text_items=[(prompt, answer)], text_every=3)
    text = ds[2]
    assert "pixel_values" not in text and text["input_ids"].tolist() == prompt + answer
    assert text["labels"].tolist() == [-100] * len(prompt) + answer and len(text["cell_labels"]) == 0
    batch = collate([ds[i] for i in (1, 2, 3)], tok.pad_token_id)
    assert batch["image_grid_thw"].shape[0] == 2 and (batch["cell_image"] != 1).all()
    got, want, _ = _packed_and_stock(batch)
    torch.testing.assert_close(got.logits, want.logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(got.loss, want.loss, atol=1e-5, rtol=0)


def test_text_questions_are_seeded_distinct_and_leave_the_check_out():
    from synthvqa.train.smol import TEXT_QUESTIONS, text_questions
    qs = text_questions(120)
    assert qs == text_questions(120) and qs != text_questions(120, seed=1)
    assert len(set(qs)) == 120 and not set(qs) & set(TEXT_QUESTIONS)
