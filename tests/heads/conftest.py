import pytest
import torch


@pytest.fixture(autouse=True)
def one_cpu_thread():
    """Tiny models run faster on one thread, and two threads thrash when the other core is busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
