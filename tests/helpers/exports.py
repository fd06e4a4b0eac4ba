"""Small real exports for tests."""

import torch

from mim_nnunet.backbones import build_encoder
from mim_nnunet.weights.export import export_encoder

CT_RECORD = {"CT": {"scheme": "ct_window", "window": [-1000.0, 1000.0]}}
MRI_RECORD = {"MRI": {"scheme": "zscore"}}


def hybrid_export(tmp_path, name="h", size="tiny", input_size=(32, 32, 32), spacing=(1.0, 1.0, 1.0),
                  normalisation=None):
    """An export of a seeded hybrid encoder; its record says it was pre-trained on CT unless
    ``normalisation`` says otherwise."""
    torch.manual_seed(0)
    encoder, _ = build_encoder("hybrid", size, 1, input_size)
    return export_encoder(encoder, "hybrid", size, tmp_path / f"{name}.safetensors", in_channels=1,
                          input_size=input_size, spacing=list(spacing),
                          normalisation=CT_RECORD if normalisation is None else normalisation)[0]


def raw_sha1(t) -> str:
    """SHA-1 of a tensor's raw bytes, independent of the code under test (hashlib only)."""
    import hashlib
    return hashlib.sha1(t.contiguous().numpy().tobytes()).hexdigest()
