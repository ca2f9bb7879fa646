"""Old home of the CUDA-graph path, now ``dashvl.engine.graphs``.

``import dashvl.graphs`` gives that very module object (not a copy), so settings such as
``dashvl.graphs.EMULATE = True`` or ``MAX_SLOTS`` reach the engine, and ``release``, ``bucket_width``,
``GraphBank`` are the same objects.
"""
import sys

from .engine import graphs as _graphs

sys.modules[__name__] = _graphs
