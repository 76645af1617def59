"""The one place that turns logits into loss and accuracy counts.

Sums, not means: the trainer divides by the number of samples at the end of an epoch,
so a short last batch weighs exactly as many samples as it holds. Accuracy counts are
sums of `is_correct`, which also tells which images a model got right.
"""

from __future__ import annotations

import torch


def cross_entropy_parts(logits: torch.Tensor, labels: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed cross-entropy, number of correct predictions and the log-softmax itself.

    `logits` is [..., B, C] and `labels` [..., B]; the sums have shape [...], so a
    population of P models ([P, B, C]) gets one loss and one count per member. The
    manual backward reuses the log-softmax (its exp is the softmax) instead of computing it twice.
    """
    log_probs = torch.log_softmax(logits, dim=-1)
    loss_sum = -log_probs.gather(-1, labels.unsqueeze(-1)).squeeze(-1).sum(-1)  # CE = -log p[label]
    return loss_sum, is_correct(logits, labels).sum(-1), log_probs


def is_correct(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Whether each sample's highest logit is at its label: bool [..., B] (ties: the first class)."""
    return logits.argmax(-1) == labels


def loss_and_correct(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy and number of correct predictions over the last two dims."""
    loss_sum, correct, _ = cross_entropy_parts(logits, labels)
    return loss_sum, correct
