"""GPU checks: skipped without CUDA; on the device, ``DASHVL_GPU_REPORT=path.json`` also writes every check's
numbers with the machine and versions (tests/gpu/results/ holds the recorded ones)."""
import json
import os

import pytest
import torch

_RECORDS: dict = {}


@pytest.fixture
def cuda():
    """The CUDA device, float32 without TF32 (the checks compare logits at 1e-4); skips without one."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (run on the device: python -m pytest tests/gpu)")
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield "cuda"
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


@pytest.fixture
def on_gpu(cuda):
    """``on_gpu(family) -> (model, processor)``: a tests.helpers model moved to the GPU; moved back and its graphs
    freed afterwards (the CPU tests share the cached models)."""
    import dashvl
    from tests.helpers import build

    used = []

    def get(family):
        model, proc = build(family)
        used.append(model)
        return model.to(cuda), proc

    yield get
    for model in used:
        model.to("cpu")
        dashvl.release_graphs(model)


@pytest.fixture
def record(request):
    """``record(result)``: keep one check's numbers for the report, under the test's id."""
    return lambda result: _RECORDS.__setitem__(request.node.nodeid, result)


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("DASHVL_GPU_REPORT")
    if path and _RECORDS:
        import transformers

        with open(path, "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                           cuda_devices=torch.cuda.device_count(), torch=torch.__version__,
                           transformers=transformers.__version__, exit_status=int(exitstatus), results=_RECORDS),
                      f, indent=1, default=str)
