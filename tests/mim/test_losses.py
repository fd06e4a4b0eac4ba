"""The paper's Eqs. 1-7 and 10 against hand computations."""

import math

import pytest
import torch

from mim_nnunet.mim.losses import (
    alignment_loss,
    level_weights,
    normalise_tokens,
    reconstruction_loss,
    total_loss,
)


def test_reconstruction_loss_counts_masked_tokens_only():
    pred = torch.tensor([[[1.0, 1.0], [0.0, 0.0], [3.0, 3.0]]])
    target = torch.tensor([[[0.0, 2.0], [5.0, 5.0], [3.0, 1.0]]])
    mask = torch.tensor([[True, False, True]])
    # d = [(1 + 1) / 2, ignored, (0 + 4) / 2] -> mean over masked = (1 + 2) / 2
    assert reconstruction_loss(pred, target, mask, norm_pix=False).item() == pytest.approx(1.5)


def test_norm_pix_target_by_hand():
    token = torch.tensor([[[1.0, 2.0, 3.0, 4.0]]])
    var = (1.5 ** 2 + 0.5 ** 2 + 0.5 ** 2 + 1.5 ** 2) / 3           # unbiased, as MAE
    expected = [(v - 2.5) / math.sqrt(var + 1e-6) for v in (1, 2, 3, 4)]
    assert normalise_tokens(token)[0, 0].tolist() == pytest.approx(expected, rel=1e-6)
    # zero prediction: loss = mean of squared normalised values = (5 / 4) / (var + eps)
    loss = reconstruction_loss(torch.zeros_like(token), token, torch.tensor([[True]]), norm_pix=True)
    assert loss.item() == pytest.approx(1.25 / (var + 1e-6), rel=1e-6)


def test_infonce_and_byol_by_hand():
    child = torch.tensor([[1.0, 0.0], [3.0, 3.0]])
    parents = torch.tensor([[[2.0, 0.0], [0.0, 1.0]],            # cos = 1, 0
                            [[1.0, 0.0], [1.0, 1.0]]])           # cos = 1/sqrt2, 1
    target = torch.tensor([0, 0])
    l0 = -math.log(math.exp(10) / (math.exp(10) + math.exp(0)))
    c = 1 / math.sqrt(2)
    l1 = -math.log(math.exp(c / 0.1) / (math.exp(c / 0.1) + math.exp(1 / 0.1)))
    assert alignment_loss(child, parents, target, "infonce", 0.1).item() == pytest.approx((l0 + l1) / 2, rel=1e-5)
    assert alignment_loss(child, parents, target, "byol").item() == pytest.approx(((2 - 2) + (2 - 2 * c)) / 2)
    assert alignment_loss(child, parents, torch.tensor([1, 1]), "byol").item() == pytest.approx((2 + 0) / 2)


@pytest.mark.parametrize("schedule, progress, expected", [
    ("concurrent", 0.3, (1, 1, 1)),
    ("coarse_to_fine", 0.0, (2, 0, 0)),
    ("coarse_to_fine", 0.5, (1.5, 0.5, 0.5)),       # cosine ramp is 1/2 at halfway
    ("coarse_to_fine", 1.0, (1, 1, 1)),
    ("fine_to_coarse", 0.5, (1, 0.5, 1.5)),
    ("fine_to_coarse", 0.25, (1, (1 - math.cos(math.pi / 4)) / 2, 2 - (1 - math.cos(math.pi / 4)) / 2)),
])
def test_level_weight_schedules(schedule, progress, expected):
    assert level_weights(schedule, progress) == pytest.approx(expected)


def test_total_loss_is_eq_10():
    terms = {k: torch.tensor(v) for k, v in
             {"rec_l1": 1.0, "rec_l2": 2.0, "rec_l3": 3.0, "align_12": 4.0, "align_23": 5.0}.items()}
    total, weights = total_loss(terms, (1, 1, 1, 0.1, 0.1), "concurrent", 0.0)
    assert total.item() == pytest.approx(1 + 2 + 3 + 0.4 + 0.5)
    total, weights = total_loss(terms, (1, 1, 1, 0.1, 0.1), "coarse_to_fine", 0.0)
    assert total.item() == pytest.approx(2 * 1 + 0 + 0 + 0.4 + 0.5)
    assert weights["rec_l2"] == 0 and weights["align_23"] == 0.1
    total, _ = total_loss({"rec_l1": terms["rec_l1"]}, (1, 1, 1, 0.1, 0.1), "concurrent", 0.0)
    assert total.item() == 1.0
