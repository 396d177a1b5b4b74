import pytest
import torch

torch.set_num_threads(max(1, torch.get_num_threads()))

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    """Every device present: the CPU, and a CUDA GPU where there is one."""
    return torch.device(request.param)
