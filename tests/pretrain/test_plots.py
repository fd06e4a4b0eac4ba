import matplotlib.image as mpimg
import numpy as np
import pytest
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
    first_panel = grey[:, : grey.shape[1] // 5]                  # five columns
    dark = first_panel < 0.05                                    # the panel's black (volume) pixels; the title's
    rows, cols = np.nonzero(dark.sum(1) > 20)[0], np.nonzero(dark.sum(0) > 20)[0]      # letters are too few
    top, bottom, left, right = rows.min(), rows.max(), cols.min(), cols.max()
    bright_rows, bright_cols = np.nonzero(first_panel[top:bottom + 1, left:right + 1] > 0.95)
    assert bright_rows.max() < (bottom - top) / 2 and bright_cols.max() < (right - left) / 2
    assert bright_rows.min() <= 1 and bright_cols.min() <= 1     # a quarter of the slice, in its corner


def mean_predictor_loss(volume: np.ndarray, masked_blocks) -> float:
    """The norm-pix loss of predicting each token's own mean, by hand: per 16^3 block, mean((x - mean)^2) over
    (unbiased variance + 1e-6), averaged over the masked blocks."""
    losses = []
    for z, y, x in masked_blocks:
        block = volume[z * 16:(z + 1) * 16, y * 16:(y + 1) * 16, x * 16:(x + 1) * 16].astype(np.float64)
        losses.append(np.mean((block - block.mean()) ** 2) / (block.var(ddof=1) + 1e-6))
    return float(np.mean(losses))


def test_a_fresh_network_fails_visibly_on_the_masked_tokens_at_step_0(tmp_path):
    """The reconstruction column restores each masked token's mean and spread from the input, so it correlates
    with the input even untrained; the network's own prediction differs from the normalised target by about the
    mean predictor's loss (computed here from the input's 16^3 blocks) and does not correlate with it."""
    torch.manual_seed(0)
    cfg = MiMConfig(input_size=(32, 32, 32), align_dim=32)
    z, y, x = torch.meshgrid(*[torch.linspace(-1, 1, 64)] * 3, indexing="ij")
    volume = (torch.sin(3 * x) + torch.cos(2 * y + z) + 0.3 * torch.randn(64, 64, 64))[None, None]
    out = build_mim("hybrid", "tiny", cfg)(volume, generator=torch.Generator().manual_seed(0))
    for level in out["levels"]:
        for v in range(level["inputs"].shape[0]):
            panels = reconstruction_panels(level["inputs"][v], level["mask"][v], level["pred"][v], cfg.grid)
            masked = ~np.isnan(panels["target_loss_space"][0])
            blocks = sorted({tuple(int(i) // 16 for i in idx) for idx in np.argwhere(masked)})
            assert len(blocks) == int(level["mask"][v].sum()) and masked.sum() == 16 ** 3 * len(blocks)
            expected = mean_predictor_loss(level["inputs"][v, 0].numpy(), blocks)
            assert 0.99 < expected < 1.0                                            # (P - 1) / P for P = 4096
            diff = panels["prediction_loss_space"][0] - panels["target_loss_space"][0]
            assert np.mean(diff[masked] ** 2) == pytest.approx(expected, rel=0.15)
            assert abs(np.corrcoef(panels["prediction_loss_space"][0][masked],
                                   panels["target_loss_space"][0][masked])[0, 1]) < 0.1
            assert np.isnan(panels["prediction_loss_space"][0][~masked]).all()     # visible tokens: blank
    # the level-1 reconstruction looks like the input where masked: the picture must say why
    level = out["levels"][0]
    panels = reconstruction_panels(level["inputs"][0], level["mask"][0], level["pred"][0], cfg.grid)
    masked = ~np.isnan(panels["target_loss_space"][0])
    assert np.corrcoef(panels["reconstruction"][0][masked], panels["input"][0][masked])[0, 1] > 0.5
    picture = mpimg.imread(save_reconstructions(out["levels"], cfg.grid, tmp_path / "r.png"))
    assert picture.shape[1] > 5 * 200                                               # five columns


def test_the_reconstruction_picture_says_what_it_shows(tmp_path, monkeypatch):
    """Titles and the caption line, read from the figure before it is saved."""
    from mim_nnunet.pretrain import plots
    saved = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: saved.append(fig))
    level = {"inputs": torch.randn(1, 1, 32, 32, 32), "mask": torch.tensor([[True] + [False] * 7]),
             "pred": torch.zeros(1, 8, 16 ** 3)}
    plots.save_reconstructions([level], (2, 2, 2), tmp_path / "r.png")
    fig = saved[0]
    titles = [ax.get_title() for ax in fig.axes]
    text = " ".join(t.get_text() for t in fig.texts).replace("\n", " ")
    assert "token mean and spread restored from the input" in text
    assert any("target, normalised" in t for t in titles) and any("network prediction" in t for t in titles)
    # predicting 0 (each token's mean) scores the mean predictor's loss, said in the title
    expected = mean_predictor_loss(level["inputs"][0, 0].numpy(), [(0, 0, 0)])
    assert any(f"(mse {expected:.2f})" in t for t in titles)
