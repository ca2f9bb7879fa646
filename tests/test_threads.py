"""A compressed model used from two threads: a call while another thread's is running is refused by name,
never answered wrong; calls one after the other from different threads are fine."""
import threading

import pytest
import torch

import dashvl
from tests.helpers import build, layers_of, make_inputs


def _greedy(model, inputs):
    with torch.no_grad():
        return model.generate(**inputs, max_new_tokens=4, do_sample=False)


@pytest.mark.parametrize("family", ["qwen2_vl", "llama"])
def test_a_call_during_another_threads_call_is_refused_and_the_first_is_right(family):
    model, _ = build(family)
    inputs = make_inputs(family, batch=2)
    with dashvl.compress(model, method="dash", ratio=0.5, layer=1):
        want = _greedy(model, inputs)
        inside, go_on = threading.Event(), threading.Event()

        def pause(module, args):  # thread 1 waits inside its prefill, with its plan in flight
            if threading.current_thread().name == "first" and not inside.is_set():
                inside.set()
                go_on.wait(10)

        hook = layers_of(model)[0].register_forward_pre_hook(pause)
        got = {}
        first = threading.Thread(target=lambda: got.update(first=_greedy(model, inputs)), name="first")
        try:
            first.start()
            assert inside.wait(10)
            with pytest.raises(RuntimeError, match="one compressed model serves one call at a time"):
                _greedy(model, inputs)
        finally:
            go_on.set()
            first.join(30)
            hook.remove()
        assert torch.equal(got["first"], want)  # the refused call left the running one alone
        assert torch.equal(_greedy(model, inputs), want)  # and the model is free again


def test_threads_taking_turns_get_the_sequential_answers():
    model, _ = build("qwen2_vl")
    inputs = make_inputs("qwen2_vl", batch=1)
    lock = threading.Lock()
    with dashvl.compress(model, method="dash", ratio=0.5, layer=1):
        want = _greedy(model, inputs)
        out = []

        def worker():
            for _ in range(2):
                with lock:
                    out.append(_greedy(model, inputs))

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert len(out) == 8 and all(torch.equal(o, want) for o in out)


def test_a_refused_call_does_not_keep_the_model_busy():
    model, _ = build("llama")
    inputs = make_inputs("llama", batch=1)
    with dashvl.compress(model, method="dash", ratio=0.5, layer=1):
        with pytest.raises(ValueError):
            model(**inputs, output_attentions=True)  # refused in the model's pre-hook
        result = {}
        t = threading.Thread(target=lambda: result.update(out=_greedy(model, inputs)))
        t.start()
        t.join(60)
        assert "out" in result  # another thread may call now


def test_an_error_inside_a_direct_stack_call_is_cleared_by_the_next_call():
    """The stack's post-hook is a plain one (an always-call hook would make torch.compile recompile the static
    decode step per handle): a direct stack call that raises leaves its call on the books, and this thread's
    next call clears it, so that call is exact."""
    model, _ = build("llama")
    inputs = make_inputs("llama", 1)
    layers = layers_of(model)
    with dashvl.compress(model, method="dash", ratio=0.5, layer=1), torch.no_grad():
        want = model(**inputs).logits

        def boom(module, args, output):
            raise RuntimeError("boom")

        hook = layers[3].register_forward_hook(boom)
        try:
            with pytest.raises(RuntimeError, match="boom"):
                model.model(**inputs)
        finally:
            hook.remove()
        assert model.model.layers is not layers  # the failed call's runner is still in place
        got = model(**inputs).logits
        assert model.model.layers is layers
    assert torch.equal(got, want)
