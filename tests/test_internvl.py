"""InternVL on the real classes and processor (a tiny one from config: InternViT, 2x2 pixel shuffle, Qwen2 text):
each picture is its crops plus, when there are several, a thumbnail, each a square grid of shuffled tokens.
Parity, the slow reference and the method matrix include internvl in their own files."""
import pytest
import torch

import dashvl
from tests.helpers import build, make_inputs


def test_pixel_shuffle_keeps_the_tokens_row_major():
    """The grid the trace draws is the model's own token order: the shuffled token at (i, j) holds the patches of
    rows 2i..2i+1 and columns 2j..2j+1."""
    model, _ = build("internvl")
    n = 8
    rows = torch.arange(n)[:, None].expand(n, n).float()
    cols = torch.arange(n)[None, :].expand(n, n).float()
    out = model.model.pixel_shuffle(torch.stack([rows, cols], -1)[None], scale_factor=0.5)
    assert torch.equal(out[0, :, :, 0], 2 * torch.arange(4)[:, None].expand(4, 4).float())
    assert torch.equal(out[0, :, :, 1], 2 * torch.arange(4)[None, :].expand(4, 4).float())


def test_trace_has_each_pictures_crops_and_its_thumbnail():
    model, proc = build("internvl")
    inputs = make_inputs("internvl", 2, images=2)
    with dashvl.compress(model, ratio=0.75, layer=1) as handle, torch.no_grad():
        model.generate(**inputs, max_new_tokens=2, do_sample=False)
        trace = handle.trace
    side = int(model.config.image_seq_length ** 0.5)
    for row in range(2):
        spans = [s for s in trace.spans if s.row == row]
        image_tokens = inputs["input_ids"][row] == model.config.image_token_id
        assert sum(s.positions.numel() for s in spans) == int(image_tokens.sum())
        assert all(s.grid == (1, side, side) for s in spans)
        pictures = trace.picture_spans(row)
        assert len(pictures) == 2 and all(s.role == "whole" for s in pictures)
        assert any(s.role == "crop" for s in spans)  # the test pictures are wider or taller than a tile
        # per picture its crops, then its thumbnail (a picture of one tile is that tile alone)
        roles = [s.role for s in spans]
        assert roles[-1] == "whole" and roles.count("whole") == 2
    assert int(trace.halted.sum()) > 0


def test_vision_tower_halting_is_refused_with_the_reason():
    model, _ = build("internvl")
    with pytest.raises(ValueError, match="halting inside InternVL's vision tower is not supported.*vision_ratio=0"):
        dashvl.compress(model, ratio=0.5, vision_ratio=0.5)


def test_tiny_random_internvl_loads_by_name():
    model, proc = dashvl.load_model("tiny-random-internvl", device="cpu")
    assert type(model).__name__ == "InternVLForConditionalGeneration"
    assert type(proc).__name__ == "InternVLProcessor"


def test_viewer_draws_the_thumbnail_and_eval_names_what_it_serves():
    from apps import halting_viewer as hv
    from dashvl.lmms_eval_plugin import model_id_for

    viewer = hv.Viewer(*dashvl.load_model("tiny-random-internvl"), "tiny-random-internvl")
    result = viewer.run([str(hv.EXAMPLES_DIR / "shapes.png")], "what colour is the square?", 0.5, 1, "drop", "all", 4)
    (picture,) = result.trace.picture_spans()
    assert picture.role == "whole" and len(hv.overlays(result, 3)) == 1
    assert model_id_for("tiny-random-internvl") == "dashvl_chat"  # eval/run.py: tests/test_eval.py
