import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _restore_shared_models():
    """Tests share the cached tiny models: whatever a test compressed is restored after it."""
    yield
    import dashvl
    from tests.helpers import BUILT

    for model, _ in BUILT.values():
        dashvl.restore(model)
