"""Which model carries which DashHandle. Imported by ``dashvl.api`` and by the handle (no import cycle)."""
from __future__ import annotations

import weakref

from torch import nn

__all__ = ["installed", "register", "forget"]

# model -> its handle; weak so a dropped model takes its handle with it
_HANDLES: "weakref.WeakKeyDictionary[nn.Module, object]" = weakref.WeakKeyDictionary()


def installed(model: nn.Module):
    """The handle installed on ``model``, or None."""
    return _HANDLES.get(model)


def register(model: nn.Module, handle) -> None:
    _HANDLES[model] = handle


def forget(handle) -> None:
    """Called by ``DashHandle.remove``: ``handle`` no longer belongs to its model."""
    if _HANDLES.get(handle.model) is handle:
        del _HANDLES[handle.model]
