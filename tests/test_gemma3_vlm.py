"""Gemma 3 with images (a tiny Gemma3ForConditionalGeneration from config: SigLIP, 4 pooled tokens per image, the
Gemma 3 text model with sliding windows of 8): an image's tokens attend to each other in both directions, and the
halted layers keep that rule. Parity, the slow reference (which applies it in its masks), the method matrix,
vision-tower halting, beams and second turns include gemma3 in their own files."""
import pytest
import torch

import dashvl
from dashvl.engine import region
from tests.helpers import Reference, assert_same_generation, build, dash_reference, make_inputs


@pytest.mark.parametrize("kv", ["drop", "keep"])
def test_the_halted_layers_keep_the_images_bidirectional_attention(kv, monkeypatch):
    """With the image tokens active (scope "text"), dashvl equals the slow reference, greedy answers and the logits
    at every position; with the block rule taken out of the halted layers' masks the image tokens' logits do not
    (in this tiny model the last token cannot tell: its last layer's window ends before the images)."""
    model, _ = build("gemma3")
    inputs = make_inputs("gemma3", 3, images=2)
    image = inputs["token_type_ids"] == 1
    halted, tokens, logits = dash_reference(model, inputs, layer=1, kv=kv, ratio=0.5, steps=3, scope="text")
    assert halted.any() and not halted[image].any()
    with dashvl.compress(model, method="dash", ratio=0.5, layer=1, kv=kv, scope="text") as h, torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
        assert torch.equal(h.trace.halted, halted)
    assert_same_generation(out, inputs, tokens, logits)

    real = inputs["attention_mask"].bool()
    want = Reference(model, 1, kv).logits(inputs, halted)

    def every_position():
        with dashvl.compress(model, method="dash", ratio=0.5, layer=1, kv=kv, scope="text"), torch.no_grad():
            return model(**inputs).logits

    torch.testing.assert_close(every_position()[real], want[real], atol=2e-4, rtol=0)
    monkeypatch.setattr(region, "block_of", lambda blocks, pos, past: torch.full_like(pos, -1))
    assert (every_position()[image] - want[image]).abs().max() > 1e-2


def test_trace_grids_are_the_pooled_image_grids():
    model, _ = build("gemma3")
    inputs = make_inputs("gemma3", 2, images=2)
    with dashvl.compress(model, ratio=0.75, layer=1) as handle, torch.no_grad():
        model.generate(**inputs, max_new_tokens=2, do_sample=False)
        trace = handle.trace
    side = int(model.config.mm_tokens_per_image ** 0.5)
    for row in range(2):
        spans = [s for s in trace.spans if s.row == row]
        assert [s.grid for s in spans] == [(1, side, side)] * 2
        image = inputs["input_ids"][row] == model.config.image_token_id
        assert torch.equal(torch.cat([s.positions for s in spans]), image.nonzero().flatten())


def test_flash_attention_is_refused_for_the_image_blocks():
    from dashvl.engine.region import attention_mask
    pos = torch.arange(4)[None]
    blocks = (torch.tensor([[0, 0, -1, -1]]), torch.tensor([[0, 0, -1, -1]]))
    with pytest.raises(ValueError, match="flash attention cannot serve Gemma 3's bidirectional image blocks"):
        attention_mask(pos, pos, True, True, "flash_attention_2", torch.float32, None, blocks)
    mask = attention_mask(pos, pos, True, True, "sdpa", torch.float32, None, blocks)[0, 0]
    assert mask[0, 1] and not mask[2, 3] and mask[3, 0]  # the image pair both ways; text stays causal


def test_tiny_random_gemma3_loads_by_name_and_serves_in_the_viewer():
    from apps import halting_viewer as hv

    model, proc = dashvl.load_model("tiny-random-gemma3", device="cpu")
    assert type(model).__name__ == "Gemma3ForConditionalGeneration"
    viewer = hv.Viewer(model, proc, "tiny-random-gemma3")
    result = viewer.run([str(hv.EXAMPLES_DIR / "shapes.png")], "what colour is the square?", 0.5, 1, "drop", "all", 4)
    assert len(result.trace.picture_spans()) == 1 and len(hv.overlays(result, 3)) == 1
