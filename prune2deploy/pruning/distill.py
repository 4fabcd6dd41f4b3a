"""Knowledge distillation loss (Hinton et al.), as used by GMP*/oBERT.

loss = (1 - h) * task_loss + h * T^2 * mean_heads KL(softmax(teacher / T) || softmax(student / T))

h is the hardness (1.0: teacher's soft targets only), T the temperature (low: 2.0 in the
papers). The T^2 factor keeps gradient magnitudes comparable across temperatures. For
token-level heads (QA start/end) `mask` (the attention mask) leaves the batch's padding out of
both distributions: a pad is no answer position, and the loss then no longer depends on how far
a batch happens to be padded (so the teacher's outputs can be reused across epochs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


PAD_LOGIT = -1e4  # a masked position's logit: a probability of 0 (< 1e-43) at temperatures up to 100


def kd_term(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """T^2 * KL(teacher_T || student_T), averaged over rows (last dim is the class dim); positions
    where `mask` is 0 take part in neither distribution."""
    t = temperature
    student, teacher = student.float(), teacher.float()
    if mask is not None and student.dim() == 3:  # a label per token: the padding's rows are left out
        keep = mask.bool()
        student, teacher = student[keep], teacher[keep]
    elif mask is not None:
        student = student.masked_fill(mask == 0, PAD_LOGIT)
        teacher = teacher.masked_fill(mask == 0, PAD_LOGIT)
    s_log = F.log_softmax(student.reshape(-1, student.shape[-1]) / t, dim=-1)
    t_prob = F.softmax(teacher.reshape(-1, teacher.shape[-1]) / t, dim=-1)
    return F.kl_div(s_log, t_prob, reduction="batchmean") * t * t


def kd_loss(
    student_logits: list[torch.Tensor],
    teacher_logits: list[torch.Tensor],
    task_loss: torch.Tensor | None,
    temperature: float,
    hardness: float,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """`mask`: the attention mask, for token-level heads only (None for classification)."""
    soft = sum(kd_term(s, t, temperature, mask) for s, t in zip(student_logits, teacher_logits)) / len(student_logits)
    if hardness >= 1.0 or task_loss is None:
        return soft
    return (1.0 - hardness) * task_loss + hardness * soft


def hidden_loss(student: tuple, teacher: tuple, mask: torch.Tensor) -> torch.Tensor:
    """Token-level distillation of the encoder's hidden states (ZipLM): the mean squared
    difference of every layer's output, over the non-padding tokens (the embeddings' output,
    never pruned, is left out)."""
    keep = mask.reshape(-1, mask.shape[-1]).bool()
    terms = [F.mse_loss(s.float()[keep], t.float()[keep]) for s, t in zip(student[1:], teacher[1:])]
    return sum(terms) / len(terms)
