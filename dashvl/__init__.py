"""dashvl: Delta Attention Selective Halting for vision-language model prefill.

    import dashvl
    handle = dashvl.compress(model, ratio=0.5, layer=2)
    model.generate(**inputs)
    handle.trace            # what was halted in the last prefill
    dashvl.restore(model)
"""
from . import baselines, flops  # light modules the README uses as dashvl.baselines / dashvl.flops
from .api import compress, get_handle, restore
from .calibrate import Calibration, calibrate
from .config import DashConfig
from .engine import DashHandle
from .graphs import release as release_graphs  # dashvl.graphs is dashvl.engine.graphs
from .models import load_model
from .setting import Setting, apply
from .trace import HaltTrace, VisualSpan

__all__ = ["compress", "restore", "get_handle", "load_model", "DashConfig", "DashHandle", "HaltTrace", "VisualSpan",
           "release_graphs", "Setting", "apply", "calibrate", "Calibration"]
__version__ = "0.1.0"
