"""A *setting*: one configuration of a comparison, its text form, and ``apply``, which puts it in force.

    setting = Setting.parse("method=dash,ratio=0.5,layer=2,kv=keep")
    with dashvl.apply(model, processor, setting) as applied:
        inputs = applied.processor(text=[prompt], images=[image], return_tensors="pt")
        model.generate(**inputs)
        applied.trace

Every front end (eval/run.py, the lmms-eval plugin, the viewer, the benchmarks, the terminal demo) builds its
settings here; the field list lives only in ``Setting``, each field carrying its parser and its help text.
"""
from __future__ import annotations

import dataclasses
import weakref

from . import methods
from .config import KV_MODES, SCOPES, DashConfig

__all__ = ["Setting", "Applied", "apply", "method_names"]

def _stage(name) -> str:
    """``"llm"`` or ``"inputs"`` for a method name (``dashvl.methods``); ValueError naming the methods otherwise."""
    return methods.get(name).stage


def method_names(stage: str | None = None) -> tuple[str, ...]:
    """The method names (of one stage, ``"llm"`` or ``"inputs"``, when given), for CLIs and UIs."""
    return methods.names(stage)


# ------------------------------------------------------------------------------------- text <-> values

def _number(text: str) -> float:
    return float(text)


def _integer(text: str) -> int:
    return int(text)


def _layer(text: str) -> int | float:
    """``"2"`` is layer 2, ``"0.25"`` a fraction of the depth (DashConfig's two forms)."""
    try:
        return int(text)
    except ValueError:
        return float(text)


def _name(text: str) -> str:
    return text


def _optional_name(text: str) -> str | None:
    return None if text.lower() in ("none", "") else text


def _format(value) -> str:
    return "none" if value is None else repr(value) if isinstance(value, float) else str(value)


def _field(default, parse, help: str):
    return dataclasses.field(default=default, metadata={"parse": parse, "help": help})


# --------------------------------------------------------------------------------------------- Setting

@dataclasses.dataclass(frozen=True)
class Setting:
    """How the model is reduced in one configuration; ``ratio=0`` and ``vision_ratio=0``: unmodified.

    Text form (``Setting.parse`` / ``str``): ``"method=dash,ratio=0.5,layer=2,kv=keep"``; ``"baseline"`` or ``""``
    for the defaults. Every check is DashConfig's (``"downsample"`` included, though it uses ratio only).
    """

    method: str = _field("dash", _name, f"one of {', '.join(method_names())} (downsample: fewer visual tokens "
                                        "before the LLM; the others halt inside it)")
    ratio: float = _field(0.0, _number, "a number in [0, 1), the share of tokens removed (0: the unmodified model)")
    layer: int | float = _field(2, _layer, "the activation layer l_s: an int >= 0, or a fraction of the depth in (0, 1)")
    kv: str = _field("drop", _name, f"one of {', '.join(KV_MODES)}: halted tokens as keys/values above l_s")
    scope: str | None = _field(None, _optional_name, f"one of {', '.join(SCOPES)}: the tokens that may halt "
                                                     "(none: the method's default)")
    protect_last: int = _field(1, _integer, "an int >= 1: the last N prompt tokens never halt")
    seed: int = _field(0, _integer, "an int: the seed of method random")
    vision_ratio: float = _field(0.0, _number, "a number in [0, 1), the share of each image's patches halted "
                                               "inside the vision tower (0: off)")
    vision_layer: int | float = _field(0.25, _layer, "the vision block v_s: an int >= 0, or a fraction of the "
                                                     "depth in (0, 1)")

    def __post_init__(self):
        stage = _stage(self.method)
        # DashConfig's checks for every field; a method of the "inputs" stage stands in as "dash" there
        self._config("dash" if stage == "inputs" else self.method)
        if stage == "inputs" and self.vision_ratio:
            raise ValueError(f"vision_ratio halts inside the vision tower: it combines with "
                             f"{', '.join(method_names('llm'))}, not with {self.method}")
        for name in ("ratio", "vision_ratio"):  # 0 and 0.0 print alike in labels and text
            object.__setattr__(self, name, float(getattr(self, name)))

    # ---------------------------------------------------------------- text form

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        """The field names, in order: what ``parse`` and the front ends' model_args take."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def describe(cls, name: str) -> str:
        """One line of help for field ``name`` (for CLIs)."""
        return cls._spec(name).metadata["help"]

    @classmethod
    def _spec(cls, name: str) -> dataclasses.Field:
        for f in dataclasses.fields(cls):
            if f.name == name:
                return f
        raise ValueError(f"unknown setting {name!r}; the settings are {', '.join(cls.fields())}")

    @classmethod
    def _convert(cls, name: str, text) -> object:
        spec = cls._spec(name)
        try:
            return spec.metadata["parse"](str(text).strip())
        except ValueError:
            raise ValueError(f"{name} takes {spec.metadata['help']}; got {text!r}") from None

    @classmethod
    def parse_value(cls, name: str, text: str):
        """The value of field ``name`` from its text, checked on its own. ValueError naming what is allowed."""
        return getattr(cls(**{name: cls._convert(name, text)}), name)

    @classmethod
    def cli_type(cls, name: str, many: bool = False):
        """An argparse ``type`` for field ``name`` (``many``: a comma list of its values), checked by Setting."""
        import argparse

        def parse(text: str):
            items = [x for x in text.split(",") if x.strip()] if many else [text]
            if not items:
                raise argparse.ArgumentTypeError(f"give at least one {name}")
            try:
                values = [cls.parse_value(name, x) for x in items]
            except ValueError as err:
                raise argparse.ArgumentTypeError(str(err)) from None
            return list(dict.fromkeys(values)) if many else values[0]
        parse.__name__ = name  # argparse names the type in its own messages
        return parse

    @classmethod
    def parse(cls, text: str) -> "Setting":
        """``"method=dash,ratio=0.5,layer=2"`` -> Setting; ``"baseline"`` or ``""``: the defaults.

        Raises ValueError for an unknown key (naming the keys), a key given twice, or a bad value (naming the
        field and what it takes)."""
        return cls.from_args(cls.split(text))

    @staticmethod
    def split(text: str) -> dict[str, str]:
        """``{key: value text}`` of a setting's text form, keys unchecked (``"baseline"`` or ``""``: ``{}``)."""
        text = text.strip()
        if text in ("", "baseline"):
            return {}
        values = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, sep, value = (s.strip() for s in item.partition("="))
            if not sep:
                raise ValueError(f"a setting is key=value pairs separated by commas (e.g. 'method=dash,ratio=0.5') "
                                 f"or 'baseline'; got {item!r} in {text!r}")
            if key in values:
                raise ValueError(f"{key} is given twice in {text!r}")
            values[key] = value
        return values

    @classmethod
    def from_args(cls, values) -> "Setting":
        """A Setting from ``{field: value}``, where a value may be text (parsed as ``parse`` does) or already
        typed (as lmms-eval's model_args parser gives them). ValueError for an unknown key, naming the keys."""
        typed = {}
        for key, value in values.items():
            cls._spec(key)  # an unknown key: ValueError naming the settings
            typed[key] = cls._convert(key, value) if isinstance(value, str) else value
        return cls(**typed)

    def to_args(self) -> str:
        """The fields that differ from their defaults as ``key=value,...`` ("" for the defaults): what
        ``Setting.parse`` and lmms-eval's model_args take."""
        return ",".join(f"{f.name}={_format(getattr(self, f.name))}" for f in dataclasses.fields(self)
                        if getattr(self, f.name) != f.default)

    def __str__(self) -> str:
        return self.to_args() or "baseline"

    # ---------------------------------------------------------------- meaning

    @property
    def stage(self) -> str:
        """``"llm"`` (halting inside the model) or ``"inputs"`` (fewer visual tokens before it)."""
        return _stage(self.method)

    @property
    def baseline(self) -> bool:
        """True when the model runs unmodified."""
        return self.ratio == 0 and not self.vision_ratio

    @property
    def label(self) -> str:
        """A short name, also a folder name: ``baseline``, ``dash-0.5``, ``downsample-0.75``, ``dash-0.5-v0.5``."""
        if self.baseline:
            return "baseline"
        return f"{self.method}-{self.ratio:g}" + (f"-v{self.vision_ratio:g}" if self.vision_ratio else "")

    def check(self, num_layers: int, vision_blocks: int | None = None) -> None:
        """The checks that need the model: ``layer`` within ``num_layers`` decoder layers and, when
        ``vision_ratio > 0``, ``vision_layer`` within the tower's ``vision_blocks``. ValueError naming the range."""
        config = self._config("dash" if self.stage == "inputs" else self.method)
        config.resolve_layer(num_layers)
        if self.vision_ratio:
            if vision_blocks is None:
                raise ValueError("vision_ratio must be 0 for this model: its vision tower cannot halt patches")
            config.resolve_vision_layer(vision_blocks)

    def dash_config(self) -> DashConfig:
        """The DashConfig that ``dashvl.compress`` takes (ValueError for an "inputs" method: it has none)."""
        return self._config(self.method)

    def _config(self, method: str) -> DashConfig:
        return DashConfig(ratio=self.ratio, layer=self.layer, kv=self.kv, scope=self.scope,
                          protect_last=self.protect_last, method=method, seed=self.seed,
                          vision_ratio=self.vision_ratio, vision_layer=self.vision_layer)


# --------------------------------------------------------------------------------------------- apply

# model -> the Applied in force on it; weak so that a dropped model takes it along
_APPLIED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


class Applied:
    """A setting in force on a model, as ``apply`` returned it; ``remove()`` or leaving its ``with`` block undoes it.

    Attributes:
        setting: the Setting.
        processor: what builds the inputs: the processor itself, or a stand-in whose call downsamples the
            images (an "inputs" method); every other attribute is the processor's.
        handle: the ``DashHandle`` when dashvl halts inside the model, else None.
        downsample: the ``dashvl.baselines.Downsample`` for an "inputs" method, else None.
    """

    def __init__(self, model, setting: Setting, processor, handle, downsample):
        self.model, self.setting, self.handle, self.downsample = model, setting, handle, downsample
        self.processor = processor if downsample is None else _Downsampling(downsample)

    @property
    def trace(self):
        """The last prefill's ``HaltTrace``, or None when dashvl is not installed (see ``apply(trace=True)``)."""
        return self.handle.trace if self.handle is not None else None

    def remove(self) -> None:
        """Undo the setting: the model and the processor are as before ``apply`` (idempotent)."""
        try:
            if self.handle is not None:
                self.handle.remove()
        finally:
            if self.downsample is not None:
                self.downsample.remove()
            if _APPLIED.get(self.model) is self:
                del _APPLIED[self.model]

    def __enter__(self) -> "Applied":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"Applied({self.setting}, {'in force' if _APPLIED.get(self.model) is self else 'removed'})"


class _Downsampling:
    """The processor with its call through ``Downsample.process``; other attributes are the processor's."""

    def __init__(self, downsample):
        self._downsample = downsample

    def __call__(self, *args, **kwargs):
        return self._downsample.process(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._downsample.processor, name)


def apply(model, processor, setting: Setting, *, trace: bool = False, cuda_graph: bool | None = None) -> Applied:
    """Put ``setting`` in force on ``model`` (in place) and return the ``Applied`` that undoes it.

    An "llm" method (dash, random, fastv) goes through ``dashvl.compress``; an "inputs" method (downsample)
    wraps ``processor`` through ``dashvl.baselines.downsample`` (build inputs with ``applied.processor``). The
    baseline installs nothing.

    Args:
        processor: the model's processor; may be None for "llm" methods.
        trace: install dashvl at ratio 0 where the setting halts nothing inside the model (the baseline, an
            "inputs" method), so that ``applied.trace`` describes the prefill; outputs stay bit-identical.
        cuda_graph: ``DashConfig.cuda_graph``.

    Raises:
        ValueError: the model already carries a setting or a ``dashvl.compress`` (remove or restore it first);
            a setting this model cannot take (e.g. a layer beyond its depth). Every check runs before the model
            is touched: a refusal leaves it as it was.
    """
    from .api import compress, get_handle
    from .baselines import Downsample

    if not isinstance(setting, Setting):
        raise TypeError(f"setting must be a dashvl.Setting (Setting.parse builds one from text); "
                        f"got {type(setting).__name__}")
    if model in _APPLIED:
        raise ValueError(f"a setting is already in force on this model ({_APPLIED[model].setting}): "
                         "remove() it before applying another")
    if get_handle(model) is not None:
        raise ValueError("the model is already compressed (dashvl.compress): dashvl.restore(model) before apply")
    inputs = setting.stage == "inputs"
    if inputs and processor is None:
        raise ValueError(f"method {setting.method} changes the inputs: apply needs the model's processor")
    config = None
    if trace or not (setting.baseline or inputs):
        config = setting._config("dash" if inputs else setting.method)
        config = dataclasses.replace(config, cuda_graph=cuda_graph, **({"ratio": 0.0} if inputs else {}))
    # Downsample and compress each check everything before they change anything: build the one that can be
    # undone without a trace first, and undo it if the other refuses
    downsample = Downsample(model, processor, setting.ratio) if inputs and not setting.baseline else None
    try:
        handle = compress(model, config) if config is not None else None
    except BaseException:
        if downsample is not None:
            downsample.remove()
        raise
    applied = _APPLIED[model] = Applied(model, setting, processor, handle, downsample)
    return applied
