import importlib.util
from pathlib import Path

import torch

from reference.fixtures import one_cpu_thread  # noqa: F401

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "text_lm.py"


def test_text_lm_example_trains_and_generates():
    spec = importlib.util.spec_from_file_location("text_lm_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    result = module.main(steps=60, verbose=False)
    torch.set_num_threads(threads)
    assert result["losses"][-1] < result["losses"][0] / 4
    assert isinstance(result["answer"], str) and result["answer"]
