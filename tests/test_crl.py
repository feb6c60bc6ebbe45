import math

import pytest
import torch

from activecrl.training.crl import CorrectnessHistory, confidence, correctness_ranking_loss
from activecrl.core.errors import ConfigError


def test_loss_on_hand_computed_pairs():
    # pairs: (0,1), (1,2), (2,0)
    kappa = torch.tensor([0.9, 0.6, 0.7])
    c = torch.tensor([1.0, 0.5, 0.5])
    # (0,1): c0 > c1, g = 1: max(0, -(0.9-0.6) + 0.5) = 0.2
    # (1,2): c1 == c2, g = 0: max(0, 0 + 0) = 0
    # (2,0): c2 < c0, g = -1: max(0, +(0.7-0.9) + 0.5) = 0.3
    loss = correctness_ranking_loss(kappa, c)
    assert loss.ndim == 0
    assert loss.item() == pytest.approx((0.2 + 0.0 + 0.3) / 3)


def test_loss_zero_when_ranking_respects_margins():
    kappa = torch.tensor([0.95, 0.5, 0.2])
    c = torch.tensor([0.9, 0.4, 0.1])
    # (0,1): -(0.45) + 0.5 = 0.05 > 0 -> 0.05; (1,2): -(0.3)+0.3 = 0 ; (2,0): g=-1: (0.2-0.95)+0.8=0.05
    assert correctness_ranking_loss(kappa, c).item() == pytest.approx((0.05 + 0 + 0.05) / 3)
    kappa = torch.tensor([1.0, 0.5, 0.0])
    c = torch.tensor([1.0, 0.5, 0.0])
    assert correctness_ranking_loss(kappa, c).item() == pytest.approx(0.0)


def test_loss_wrong_order_costs_difference_plus_margin():
    kappa = torch.tensor([0.2, 0.8])
    c = torch.tensor([1.0, 0.0])
    # (0,1): g=1: -(0.2-0.8)+1 = 1.6 ; (1,0): g=-1: (0.8-0.2)+1 = 1.6
    assert correctness_ranking_loss(kappa, c).item() == pytest.approx(1.6)


def test_loss_gradient_pushes_confidences_apart():
    kappa = torch.tensor([0.5, 0.5], requires_grad=True)
    correctness_ranking_loss(kappa, torch.tensor([1.0, 0.0])).backward()
    assert kappa.grad[0] < 0 < kappa.grad[1]  # descending raises kappa_0, lowers kappa_1


def test_loss_rejects_bad_shapes():
    with pytest.raises(ConfigError, match="same length"):
        correctness_ranking_loss(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ConfigError, match="non-empty"):
        correctness_ranking_loss(torch.zeros(0), torch.zeros(0))


def test_confidence_functions():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1], [1 / 3, 1 / 3, 1 / 3]]))
    assert confidence(logits, "softmax").tolist() == pytest.approx([0.7, 1 / 3], abs=1e-6)
    assert confidence(logits, "margin").tolist() == pytest.approx([0.5, 0.0], abs=1e-6)
    h = -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1))
    assert confidence(logits, "entropy").tolist() == pytest.approx([1 - h / math.log(3), 0.0], abs=1e-6)
    one_hot = torch.tensor([[50.0, 0.0, 0.0]])
    for kind in ("softmax", "entropy", "margin"):
        assert confidence(one_hot, kind).item() == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ConfigError, match="rank target must be one of"):
        confidence(logits, "nope")


def test_history_counts_and_fractions():
    h = CorrectnessHistory(5)
    assert h.correctness(torch.arange(5)).tolist() == [0.0] * 5  # never seen -> 0
    h.update(torch.tensor([0, 1, 2]), torch.tensor([True, False, True]))
    h.update(torch.tensor([0, 2, 3]), torch.tensor([True, False, False]))
    assert h.seen.tolist() == [2, 1, 2, 1, 0]
    assert h.correctness(torch.tensor([0, 1, 2, 3, 4])).tolist() == pytest.approx([1.0, 0.0, 0.5, 0.0, 0.0])
    with pytest.raises(ConfigError):
        CorrectnessHistory(0)
