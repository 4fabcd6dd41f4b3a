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


def test_masked_positions_take_no_part_in_the_kd_loss():
    # a QA batch padded further (with any logits there) gives the same loss as the unpadded rows
    torch.manual_seed(3)
    s, t = torch.randn(2, 5), torch.randn(2, 5)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    s_wide = torch.cat([s, torch.randn(2, 4) * 5], 1)
    t_wide = torch.cat([t, torch.randn(2, 4) * 5], 1)
    mask_wide = torch.cat([mask, torch.zeros(2, 4, dtype=torch.long)], 1)
    for T in (1.0, 2.0, 8.0):
        narrow = kd_term(s, t, T, mask)
        assert kd_term(s_wide, t_wide, T, mask_wide).item() == pytest.approx(narrow.item(), rel=1e-5)
        row0 = kd_term(s[:1, :3], t[:1, :3], T) / 2  # batchmean over the 2 rows
        row1 = kd_term(s[1:], t[1:], T) / 2
        assert narrow.item() == pytest.approx((row0 + row1).item(), rel=1e-5)
    assert kd_term(s, t, 2.0).item() != pytest.approx(kd_term(s, t, 2.0, mask).item(), rel=1e-3)


class _CountingQA(torch.nn.Module):
    """A QA 'teacher' whose logits at a position depend on that token alone; counts its calls."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        from transformers.modeling_outputs import QuestionAnsweringModelOutput

        self.calls += 1
        x = input_ids.float()
        return QuestionAnsweringModelOutput(start_logits=torch.sin(x), end_logits=torch.cos(x))


def _qa_batch(rows: list[list[int]]) -> dict:
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return {"input_ids": ids, "attention_mask": mask}


def test_teacher_outputs_are_reused_whatever_the_batch_and_its_padding():
    from prune2deploy.train.loop import TeacherOutputs

    feats = {0: [5, 6, 7], 1: [8, 9, 10, 11, 12], 2: [13, 14], 3: [15, 16, 17, 18]}
    teacher = _CountingQA()
    cache = TeacherOutputs(teacher)
    cache([0, 1], _qa_batch([feats[0], feats[1]]))
    cache([2, 3], _qa_batch([feats[2], feats[3]]))
    assert teacher.calls == 2
    idx = [3, 0, 2]  # another epoch: other batch-mates, another padded width
    batch = _qa_batch([feats[i] for i in idx])
    got = cache(idx, batch)
    assert teacher.calls == 2  # no forward pass
    fresh = [torch.sin(batch["input_ids"].float()), torch.cos(batch["input_ids"].float())]
    m = batch["attention_mask"].bool()
    for g, f in zip(got, fresh):
        assert g.shape == f.shape
        assert torch.equal(g[m], f[m])
    cache([1, 4], _qa_batch([feats[1], [19, 20]]))  # a feature not seen yet: the teacher runs
    assert teacher.calls == 3
