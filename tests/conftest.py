import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _restore_shared_models():
    """Tests share the cached tiny models: whatever a test compressed is restored after it."""
    yield
    import dashvl
    from helpers import BUILT

    for model, _ in BUILT.values():
        dashvl.restore(model)
