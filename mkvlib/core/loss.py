"""The Matryoshka training loss: KD (KL from the uncompressed teacher) plus next-token cross-entropy.

    loss = kd_weight * KL(p_teacher || p_student) + lm_weight * CE(student, next token)

both averaged over real (non-padding) next-token positions; the project's default is KD only (TrainConfig), the paper's KD : LM = 1 : 3.
Introduced in notebook 02.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def next_token_targets(ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
    """Labels (B, T-1) = ids shifted left, and a float mask (B, T-1) of positions whose input and target are real."""
    labels = ids[:, 1:]
    if attention_mask is None:
        return labels, torch.ones(labels.shape, dtype=torch.float32, device=ids.device)
    if attention_mask.shape != ids.shape:
        raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} differs from ids {tuple(ids.shape)}")
    m = attention_mask.to(torch.float32)
    return labels, m[:, 1:] * m[:, :-1]


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, ids: torch.Tensor,
                 attention_mask: torch.Tensor | None = None, kd_weight: float = 1.0, lm_weight: float = 3.0):
    """(loss, parts) for logits (B, T, vocab) and ids (B, T); ``parts`` holds detached floats kd, lm.

    The last position has no target and is dropped. With ``kd_weight == 0`` the teacher may be None.
    Computed in float32 whatever the logits' dtype.
    """
    labels, mask = next_token_targets(ids, attention_mask)
    n = mask.sum().clamp_min(1.0)
    logp = F.log_softmax(student_logits[:, :-1].float(), dim=-1)           # (B, T-1, V)
    loss = logp.new_zeros(())
    parts = {}
    if kd_weight:
        if teacher_logits is None:
            raise ValueError("kd_weight > 0 needs teacher logits")
        t_logp = F.log_softmax(teacher_logits[:, :-1].float(), dim=-1)
        kl = (t_logp.exp() * (t_logp - logp)).sum(-1)                      # (B, T-1)
        kd = (kl * mask).sum() / n
        loss = loss + kd_weight * kd
        parts["kd"] = float(kd.detach())
    if lm_weight:
        nll = -logp.gather(-1, labels[..., None]).squeeze(-1)              # (B, T-1)
        lm = (nll * mask).sum() / n
        loss = loss + lm_weight * lm
        parts["lm"] = float(lm.detach())
    return loss, parts
