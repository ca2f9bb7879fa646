"""dashvl.viz on real traces of the tiny models: where halted tokens land on the picture, the heatmap, the
plot and the token labels. Pictures are uniform grey so every expected pixel is known exactly."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

import dashvl
from dashvl import viz
from dashvl.flops import prefill_flops
from dashvl.tiny import sample_image

GREY = (128, 128, 128)
PROMPT = "what colour is the square?"


def _traced(name: str, sizes, **settings):
    """(trace, input_ids, tokenizer, text_config) of one prefill of ``name`` on pictures of ``sizes``."""
    model, proc = dashvl.load_model(name)
    pics = [sample_image(w, h, seed=i) for i, (w, h) in enumerate(sizes)]  # varied Δ; the grey copies are drawn
    content = [{"type": "image"} for _ in pics] + [{"type": "text", "text": PROMPT}]
    text = proc.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    inputs = proc(text=[text], images=pics, return_tensors="pt")
    with dashvl.compress(model, **{"ratio": 0.5, "layer": 1, **settings}) as handle, torch.no_grad():
        model(**inputs)
    return handle.trace, inputs["input_ids"], proc.tokenizer, model.config.get_text_config()


@pytest.fixture(scope="module")
def qwen():
    return _traced("tiny-random-qwen2-vl", [(300, 120), (100, 200)])  # wide and tall: dynamic grids


@pytest.fixture(scope="module")
def llava():
    return _traced("tiny-random-llava", [(200, 100)], kv="keep")


def _cell_centres(box, grid_hw):
    """Pixel (y, x) at the centre of every token of a grid laid over ``box``: [(r, c, y, x)]."""
    left, top, right, bottom = box
    h, w = grid_hw
    return [(r, c, int(top + (r + 0.5) * (bottom - top) / h), int(left + (c + 0.5) * (right - left) / w))
            for r in range(h) for c in range(w)]


HALTED_RGB = 0.45 * 128 + 0.55 * np.array([214, 39, 40])


@pytest.mark.parametrize("image", [0, 1])
def test_overlay_on_qwen_dynamic_grid(qwen, image):
    trace, _, _, _ = qwen
    W, H = (300, 120) if image == 0 else (100, 200)
    grid = trace.span(image).grid
    assert grid[1] != grid[2]  # not square: the aspect ratio is kept
    out = viz.halted_overlay(trace, Image.new("RGB", (W, H), GREY), image, size=448)
    assert max(out.size) == 448 and abs(out.size[0] / out.size[1] - W / H) < 0.02
    px = np.asarray(out, dtype=float)
    mask = trace.patch_mask(image=image)[0]
    assert 0 < int(mask.sum()) < mask.numel()
    for r, c, y, x in _cell_centres(viz.grid_box(out.size), mask.shape):
        expected = HALTED_RGB if mask[r, c] else np.array(GREY)
        np.testing.assert_allclose(px[y, x], expected, atol=1.5, err_msg=f"token ({r}, {c})")


def test_overlay_below_halting_layer_shows_nothing_halted(qwen):
    trace, _, _, _ = qwen
    out = np.asarray(viz.halted_overlay(trace, Image.new("RGB", (300, 120), GREY), 0, layer=trace.layer), dtype=float)
    for _, _, y, x in _cell_centres(viz.grid_box((out.shape[1], out.shape[0])), trace.span(0).grid[1:]):
        np.testing.assert_allclose(out[y, x], GREY, atol=1.5)


def test_overlay_on_llava_centre_crop(llava):
    trace, _, _, _ = llava
    out = viz.halted_overlay(trace, Image.new("RGB", (200, 100), GREY), 0, crop=1.0, size=400)
    assert out.size == (400, 200)
    box = viz.grid_box(out.size, 1.0)
    assert box == (100, 0, 300, 200)  # the centred square the CLIP processor keeps
    px = np.asarray(out, dtype=float)
    np.testing.assert_allclose(px[100, 20], 0.3 * 128 + 0.7 * 235, atol=1.5)  # cropped away: washed out
    mask = trace.patch_mask(image=0)[0]
    assert mask.shape == (4, 4)
    for r, c, y, x in _cell_centres(box, mask.shape):
        np.testing.assert_allclose(px[y, x], HALTED_RGB if mask[r, c] else GREY, atol=1.5)


def test_grid_box():
    assert viz.grid_box((300, 120)) == (0, 0, 300, 120)
    assert viz.grid_box((300, 120), 1.0) == (90, 0, 210, 120)
    assert viz.grid_box((100, 300), 0.5) == (25, 125, 75, 175)
    for bad in (0, 1.5, -1, True, "1"):
        with pytest.raises(ValueError, match=r"crop must be None .* \(0, 1\]"):
            viz.grid_box((10, 10), bad)


def test_delta_heatmap_colours_follow_scores(qwen):
    trace, _, _, _ = qwen
    out = viz.delta_heatmap(trace, Image.new("RGB", (300, 120), GREY), 0, size=448, alpha=0.65)
    W, H = 448, 179
    assert out.size == (W, H + 28)  # the picture and the colour bar
    scores = trace.score_grid(image=0)[0]
    lo, hi = divmod(int(scores.argmin()), scores.shape[1]), divmod(int(scores.argmax()), scores.shape[1])
    centres = {(r, c): (y, x) for r, c, y, x in _cell_centres((0, 0, W, H), scores.shape)}
    from matplotlib import colormaps
    px = np.asarray(out, dtype=float)
    for cell, value in ((lo, 0.0), (hi, 1.0)):
        expected = 0.35 * 128 + 0.65 * np.array(colormaps["viridis"](value)[:3]) * 255
        np.testing.assert_allclose(px[centres[cell]], expected, atol=1.5)
    with pytest.raises(ValueError, match="alpha"):
        viz.delta_heatmap(trace, Image.new("RGB", (8, 8)), 0, alpha=2)


def test_tokens_per_layer_figure_and_flops(qwen):
    trace, _, _, text_config = qwen
    fig = viz.tokens_per_layer_figure(trace, text_config)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    heights = np.zeros(trace.num_layers)
    for bar in ax.patches:
        heights[round(bar.get_x() + bar.get_width() / 2)] += bar.get_height()
    assert heights.tolist() == trace.tokens_per_layer[0].tolist()
    summary = viz.flops_summary(text_config, trace)
    assert (summary.unmodified, summary.dash) == prefill_flops(text_config, trace)
    assert summary.speedup > 1 and 0 < summary.saved < 1
    assert f"{summary.saved:.0%} saved" in ax.get_title() and "saved" in summary.text
    assert "saved" not in viz.tokens_per_layer_figure(trace).axes[0].get_title()


def test_token_highlights(qwen):
    trace, ids, tokenizer, _ = qwen
    items = viz.token_highlights(trace, ids, tokenizer)
    labels = [label for _, label in items]
    assert labels.count(viz.HALTED) == int(trace.num_halted("text")[0])
    assert labels.count(viz.ACTIVE) + labels.count(viz.HALTED) == int((trace.kinds[0] == 0).sum())
    images = [text for text, label in items if label == viz.IMAGE]
    for i, text in enumerate(images):
        mask = trace.patch_mask(image=i)
        assert text == f"[image {i + 1}: {int(mask.sum())} of {mask.numel()} tokens halted]"
    assert len(images) == 2
    text_ids = ids[0][trace.kinds[0] == 0].tolist()
    assert "".join(t for t, label in items if label != viz.IMAGE) == tokenizer.decode(text_ids)
    assert set(labels) <= set(viz.LABEL_COLOURS)


def test_scope_text_halts_no_image_token():
    trace, ids, tokenizer, _ = _traced("tiny-random-llava", [(56, 56)], scope="text")
    assert not trace.patch_mask(image=0).any()
    assert viz.token_highlights(trace, ids[0], tokenizer)[0][1] in (viz.ACTIVE, viz.HALTED)  # [T] ids work too


def test_bad_arguments_name_what_is_allowed(qwen):
    trace, ids, tokenizer, _ = qwen
    grey = Image.new("RGB", (30, 30), GREY)
    with pytest.raises(ValueError, match="row 0 has 2 image"):
        viz.halted_overlay(trace, grey, image=2)
    with pytest.raises(ValueError, match=r"layer must be in \[0, 3\]"):
        viz.halted_overlay(trace, grey, layer=4)
    with pytest.raises(ValueError, match="size must be >= 16"):
        viz.halted_overlay(trace, grey, size=8)
    with pytest.raises(ValueError, match=r"frame must be in \[0, 0\]"):
        viz.delta_heatmap(trace, grey, frame=1)
    with pytest.raises(ValueError, match=r"row must be in \[0, 0\]"):
        viz.tokens_per_layer_figure(trace, row=1)
    with pytest.raises(ValueError, match="input_ids have 5 tokens but the trace has"):
        viz.token_highlights(trace, ids[:, :5], tokenizer)
