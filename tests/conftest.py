"""Suite-wide settings: tiny models run on one intra-op thread (on 2 shared cores, two contending threads made
tiny ops ~10-100x slower), and real-data paths resolve to ../shared/data beside the repo."""
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
