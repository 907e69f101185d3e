import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

from tiny import make_hf_model, make_model  # noqa: E402

# Two threads on an idle machine; ALIGNEZ_TEST_THREADS=1 while a benchmark holds a core
# (on a loaded 2-core machine, thread-pool wake-ups make tiny-tensor ops ~100x slower).
torch.set_num_threads(int(os.environ.get("ALIGNEZ_TEST_THREADS", 0)) or max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def llama():
    """Tiny random Llama bridge (float32: the bridge's Llama attention gives NaN for
    padded rows in float64), with a ChatML chat template."""
    return make_model("llama", dtype=torch.float32)


@pytest.fixture(scope="session")
def gpt2():
    """Tiny random GPT-2 bridge in float64 (no chat template): near-exact numerics."""
    return make_model("gpt2", dtype=torch.float64)


@pytest.fixture(params=["llama", "gpt2"])
def tiny(request, llama, gpt2):
    return {"llama": llama, "gpt2": gpt2}[request.param]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny random Llama checkpoint on disk, loadable with --model <folder>."""
    hf, tok = make_hf_model("llama", dtype=torch.float32)
    path = tmp_path_factory.mktemp("tiny-llama")
    hf.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)
