import matplotlib.image as mpimg
import numpy as np
import torch

from mim_nnunet.mim import MiMConfig, build_mim
from mim_nnunet.mim.tokens import patchify
from mim_nnunet.pretrain.plots import (
    reconstruction_panels,
    save_progress,
    save_reconstructions,
)


def test_reconstruction_panels_put_predictions_only_where_masked():
    torch.manual_seed(0)
    volume = torch.randn(1, 32, 32, 32)
    mask = torch.tensor([True, False, False, True, False, False, False, True])
    target = patchify(volume[None])[0]
    mean, std = target.mean(-1, keepdim=True), (target.var(-1, keepdim=True) + 1e-6).sqrt()
    pred = (target - mean) / std                                   # a perfect norm-pix prediction
    pred[0] += 1.0                                                 # token 0 (masked) off by one std
    panels = reconstruction_panels(volume, mask, pred, (2, 2, 2))
    recon = torch.from_numpy(panels["reconstruction"])
    assert torch.allclose(recon[:, 16:, :, :], volume[:, 16:, :, :], atol=1e-5)        # tokens 4-7: exact or visible
    assert torch.allclose(recon[:, :16, :16, :16], volume[:, :16, :16, :16] + std[0], atol=1e-4)
    assert torch.allclose(recon[:, :16, 16:, 16:], volume[:, :16, 16:, 16:], atol=1e-4)  # token 3, perfect
    masked = torch.from_numpy(panels["masked"])
    assert (masked[:, :16, :16, :16] == volume.min()).all()
    assert torch.equal(masked[:, :16, :16, 16:], volume[:, :16, :16, 16:])              # token 1 visible


def test_pictures_are_written(tmp_path):
    cfg = MiMConfig(input_size=(32, 32, 32), align_dim=32)
    out = build_mim("hybrid", "tiny", cfg)(torch.randn(1, 1, 64, 64, 64), generator=torch.Generator().manual_seed(0))
    path = save_reconstructions(out["levels"], cfg.grid, tmp_path / "recon" / "step_1.png")
    assert mpimg.imread(path).shape[0] > 3 * 100                  # three level rows
    records = [{"step": i, "loss": 3 - i * 0.1, "rec_l1": 1.0, "align_12": 2.0, "lr": 1e-4 * i,
                "subvolumes_per_s": 5.0} for i in range(5)]
    assert mpimg.imread(save_progress(records, tmp_path / "progress.png")).ndim == 3
    assert not list(tmp_path.rglob(".tmp_*"))


def test_reconstruction_pictures_show_the_store_in_the_radiological_view(tmp_path):
    # store arrays are (z, y, x) oriented RAS: a bright block at large y (anterior) and large x (the patient's
    # right) must appear at the top left of the input panel
    volume = torch.zeros(1, 1, 32, 32, 32)
    volume[..., 20:32, 24:32, 24:32] = 1.0
    level = {"inputs": volume, "mask": torch.zeros(1, 8, dtype=torch.bool), "pred": torch.zeros(1, 8, 16 ** 3)}
    picture = mpimg.imread(save_reconstructions([level], (2, 2, 2), tmp_path / "r.png", orientation="RAS"))
    grey = picture[..., :3].mean(-1)
    first_panel = grey[:, : grey.shape[1] // 3]
    dark = first_panel < 0.05                                    # the panel's black (volume) pixels; the title's
    rows, cols = np.nonzero(dark.sum(1) > 20)[0], np.nonzero(dark.sum(0) > 20)[0]      # letters are too few
    top, bottom, left, right = rows.min(), rows.max(), cols.min(), cols.max()
    bright_rows, bright_cols = np.nonzero(first_panel[top:bottom + 1, left:right + 1] > 0.95)
    assert bright_rows.max() < (bottom - top) / 2 and bright_cols.max() < (right - left) / 2
    assert bright_rows.min() <= 1 and bright_cols.min() <= 1     # a quarter of the slice, in its corner
