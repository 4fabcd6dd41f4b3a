"""Knowledge distillation loss (Hinton et al.), as used by GMP*/oBERT.

loss = (1 - h) * task_loss + h * T^2 * mean_heads KL(softmax(teacher / T) || softmax(student / T))

h is the hardness (1.0: teacher's soft targets only), T the temperature (low: 2.0 in the
papers). The T^2 factor keeps gradient magnitudes comparable across temperatures.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_term(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(teacher_T || student_T), averaged over rows (last dim is the class dim)."""
    t = temperature
    s_log = F.log_softmax(student.float().reshape(-1, student.shape[-1]) / t, dim=-1)
    t_prob = F.softmax(teacher.float().reshape(-1, teacher.shape[-1]) / t, dim=-1)
    return F.kl_div(s_log, t_prob, reduction="batchmean") * t * t


def kd_loss(
    student_logits: list[torch.Tensor],
    teacher_logits: list[torch.Tensor],
    task_loss: torch.Tensor | None,
    temperature: float,
    hardness: float,
) -> torch.Tensor:
    soft = sum(kd_term(s, t, temperature) for s, t in zip(student_logits, teacher_logits)) / len(student_logits)
    if hardness >= 1.0 or task_loss is None:
        return soft
    return (1.0 - hardness) * task_loss + hardness * soft
