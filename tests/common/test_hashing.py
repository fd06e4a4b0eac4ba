"""The digest a checkpoint carries of its own content."""

import hashlib

import torch

from mim_nnunet.common.hashing import state_sha256


def test_state_digest_survives_save_and_load_and_sees_one_bit(tmp_path):
    state = {"step": 3, "model": {"w": torch.arange(6.0).reshape(2, 3), "n": torch.tensor(7)},
             "rng": [(3, (1, 2), None), "MT19937"], "lr": 0.1}
    torch.save(state, tmp_path / "s.pt")
    assert state_sha256(torch.load(tmp_path / "s.pt", weights_only=True)) == state_sha256(state)
    flipped = {**state, "model": {**state["model"], "w": state["model"]["w"].clone()}}
    flipped["model"]["w"].view(torch.int32)[1, 2] ^= 1                       # lowest mantissa bit of 5.0
    assert flipped["model"]["w"][1, 2] != 5.0 and state_sha256(flipped) != state_sha256(state)
    # what it hashes, written out by hand for a one-tensor state
    w = torch.tensor([1.5], dtype=torch.float32)
    expected = hashlib.sha256(b"D1:Vstr:'w';Ttorch.float32(1,):" + w.numpy().tobytes()).hexdigest()
    assert state_sha256({"w": w}) == expected
    # the kind of container and the dtype count
    assert state_sha256({"a": [1, 2]}) != state_sha256({"a": (1, 2)})
    assert state_sha256({"w": w}) != state_sha256({"w": w.double()})
