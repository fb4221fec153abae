import importlib.util
from pathlib import Path

import torch

from rwkv_vision import RWKV7

from reference.fixtures import one_cpu_thread  # noqa: F401

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_rwkv7.py"


def test_train_rwkv7_example_trains_generates_and_saves(tmp_path):
    spec = importlib.util.spec_from_file_location("train_rwkv7_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    result = module.main(steps=40, save=str(tmp_path / "m"), verbose=False)
    torch.set_num_threads(threads)
    assert result["losses"][-1] < result["losses"][0] / 4
    assert isinstance(result["answer"], str) and result["answer"]
    again = RWKV7.from_pretrained(tmp_path / "m")
    ids = torch.tensor([[1, 2, 3]])
    assert torch.equal(again(ids).logits, result["model"](ids).logits)
