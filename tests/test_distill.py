import math

import pytest
import torch
import torch.nn.functional as F

from prune2deploy.pruning.distill import kd_loss, kd_term


def test_kd_term_matches_formula():
    torch.manual_seed(0)
    s, t = torch.randn(4, 7), torch.randn(4, 7)
    T = 2.0
    p = F.softmax(t / T, -1)
    q = F.softmax(s / T, -1)
    manual = (p * (p.log() - q.log())).sum(-1).mean() * T * T
    assert kd_term(s, t, T).item() == pytest.approx(manual.item(), rel=1e-5)


def test_kd_zero_when_student_equals_teacher_and_positive_otherwise():
    x = torch.randn(3, 5)
    assert kd_term(x, x, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_term(x, x + torch.randn(3, 5), 2.0).item() > 0


def test_hardness_mixes_task_and_soft_losses():
    torch.manual_seed(1)
    s = [torch.randn(2, 9), torch.randn(2, 9)]
    t = [torch.randn(2, 9), torch.randn(2, 9)]
    task = torch.tensor(3.0)
    soft = (kd_term(s[0], t[0], 2.0) + kd_term(s[1], t[1], 2.0)) / 2
    assert kd_loss(s, t, task, 2.0, 1.0).item() == pytest.approx(soft.item(), rel=1e-6)
    assert kd_loss(s, t, task, 2.0, 0.0).item() == pytest.approx(3.0)
    assert kd_loss(s, t, task, 2.0, 0.25).item() == pytest.approx(0.75 * 3.0 + 0.25 * soft.item(), rel=1e-6)


def test_temperature_squared_scaling_keeps_gradients_comparable():
    # For large T, T^2 * KL -> (1/2K) * sum((d - mean d)^2), d = t - s: finite, not vanishing like 1/T^2.
    torch.manual_seed(2)
    s, t = torch.randn(1, 4), torch.randn(1, 4)
    d = (t - s)[0]
    limit = ((d - d.mean()) ** 2).sum().item() / (2 * 4)
    assert kd_term(s, t, 20.0).item() == pytest.approx(limit, rel=0.05)
    assert not math.isclose(kd_term(s, t, 1.0).item(), kd_term(s, t, 4.0).item())
