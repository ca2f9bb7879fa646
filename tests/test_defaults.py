"""compress()'s defaults: a text-only LM takes TEXT_DEFAULTS for what the call leaves out, a VLM VISION_DEFAULTS;
an explicit DashConfig (the paper's setting by default) is taken as it is."""
import dataclasses

import dashvl
from dashvl.config import TEXT_DEFAULTS, VISION_DEFAULTS, DashConfig
from tests.helpers import build


def test_text_lm_fills_unset_settings_from_the_text_defaults():
    model, _ = build("llama")
    with dashvl.compress(model) as h:
        assert (h.config.method, h.config.layer, h.config.ratio) == ("dash-snap", 0.4, 0.25) == \
            (TEXT_DEFAULTS["method"], TEXT_DEFAULTS["layer"], TEXT_DEFAULTS["ratio"])
        assert h.layer == 1  # 0.4 of 4 layers
    with dashvl.compress(model, ratio=0.5, method="random") as h:  # what the call gives wins, field by field
        assert (h.config.method, h.config.layer, h.config.ratio) == ("random", 0.4, 0.5)


def test_an_explicit_config_is_taken_as_it_is():
    model, _ = build("llama")
    with dashvl.compress(model, DashConfig()) as h:
        assert h.config == DashConfig() and h.config.method == "dash" and h.config.layer == 2


def test_a_vision_language_model_fills_unset_settings_from_the_vision_defaults():
    model, _ = build("qwen2_vl")
    with dashvl.compress(model) as h:
        assert (h.config.method, h.config.layer, h.config.ratio, h.config.scope, h.config.kv) == \
            ("fastv", 2, 0.667, "vision", "drop") == (*(VISION_DEFAULTS[k] for k in ("method", "layer", "ratio")),
                                                      "vision", "drop")
    with dashvl.compress(model, method="dash", ratio=0.75) as h:  # the call's fields win; scope is the method's
        assert (h.config.method, h.config.layer, h.config.ratio, h.config.scope) == ("dash", 2, 0.75, "all")
    with dashvl.compress(model, DashConfig()) as h:  # the paper's setting, as it is
        assert dataclasses.asdict(h.config) == dataclasses.asdict(DashConfig())
