import pytest
import torch

from helpers.nnunet_checkpoint import load_nnunet_checkpoint
from mim_nnunet.common.errors import MimError


def test_loads_numpy_scalars_that_nnunet_logs(tmp_path):
    import numpy as np
    path = tmp_path / "checkpoint_final.pth"
    torch.save({"trainer_name": "T", "logging": {"ema": [np.float64(0.5), np.float32(0.25)]},
                "network_weights": {"w": torch.ones(2)}}, path)
    ckpt = load_nnunet_checkpoint(path)
    assert ckpt["trainer_name"] == "T" and ckpt["logging"]["ema"] == [0.5, 0.25]
    assert torch.equal(ckpt["network_weights"]["w"], torch.ones(2))


def test_refuses_pickled_code_and_reports_bad_files(tmp_path):
    evil = tmp_path / "evil.pth"
    torch.save({"cls": torch.nn.Linear}, evil)               # a class reference: code, not data
    with pytest.raises(MimError, match="evil.pth: not a readable nnU-Net checkpoint"):
        load_nnunet_checkpoint(evil)
    good = tmp_path / "good.pth"
    torch.save({"w": torch.ones(3)}, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(MimError, match="truncated.pth: not a readable"):
        load_nnunet_checkpoint(truncated)
    with pytest.raises(MimError, match="missing.pth: checkpoint not found"):
        load_nnunet_checkpoint(tmp_path / "missing.pth")
