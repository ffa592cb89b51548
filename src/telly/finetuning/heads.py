"""One encoder, four heads: the paper's (UniXcoder's) model for each downstream task.

- code search: bi-encoder with shared weights; masked mean pooling, L2 norm,
  in-batch InfoNCE on 20 x cosine (query i's code is the positive, the other codes negatives);
- clone detection: the same embedding; MSE between cos(code1, code2) and the 0/1 label;
- summarization, generation: the encoder as seq2seq through a UniLM mask
  (bidirectional source, causal target), LM head tied to the word embeddings;
- line completion: the encoder as a decoder (causal mask), same tied LM head.

The heads add no parameters: the tied LM head is the embedding matrix (so
Telly-K, which freezes the embeddings, freezes the output projection too).

Data-parallel (N processes, each with a share of the batch, DDP averaging their gradients),
every loss stays the one-device loss of the whole batch: code search scores each query
against the codes of *every* share (the whole batch's negatives), the LM losses divide by
the whole batch's target tokens; clone detection's shares are equal, so its mean already is.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from telly import tasks
from telly.finetuning.caching import top

SEARCH_SCALE = 20.0  # UniXcoder's temperature for in-batch InfoNCE


def mean_pool(hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean over each sequence's real tokens, L2-normalised."""
    keep = (torch.arange(hidden.shape[1], device=hidden.device)[None, :] < lengths[:, None]).to(hidden.dtype)
    pooled = (hidden * keep[..., None]).sum(1) / keep.sum(1, keepdim=True)
    return F.normalize(pooled, p=2, dim=-1)


def processes() -> int:
    """Data-parallel processes of this run: 1 unless launched by torchrun or accelerate."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def batch_codes(code: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The code embeddings of the whole batch (every process's share, gradients flowing back to
    their owners) and the row where this process's share starts."""
    if processes() == 1:
        return code, 0
    from torch.distributed._functional_collectives import all_gather_single  # differentiable

    return all_gather_single(code, 0, dist.group.WORLD), dist.get_rank() * len(code)  # equal shares (even_batches)


def tokens_per_process(active: torch.Tensor) -> torch.Tensor:
    """The whole batch's target tokens / N: each process's loss sum over it, averaged by DDP,
    is the mean over every target token of the batch."""
    tokens = active.sum()
    dist.all_reduce(tokens)
    return tokens / processes()


class TaskModel(nn.Module):
    """The encoder plus its task's loss. With ``k`` set, batches that carry cached
    hidden state k (``batch["hidden"]``) run only layers k..L-1."""

    def __init__(self, encoder: nn.Module, task: str, k: int | None = None, cache_dropout: float = 0.0):
        super().__init__()
        self.encoder, self.task, self.k, self.head = encoder, task, k, tasks.get(task).head
        self.cache_dropout = cache_dropout

    def last_hidden(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if "hidden" in batch:
            # The cache is the frozen layers' noise-free output; in the paper's regime their dropout
            # perturbs it every step. Dropout on the cached state puts some of that noise back.
            hidden = batch["hidden"]
            if self.cache_dropout and self.training:
                hidden = nn.functional.dropout(hidden, self.cache_dropout)
            return top(self.encoder, hidden, batch["mask"], self.k or 0)
        return self.encoder(input_ids=batch["ids"], attention_mask=batch["mask"]).last_hidden_state

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return mean_pool(self.last_hidden(batch), batch["lengths"])

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden @ self.encoder.embeddings.word_embeddings.weight.T

    def forward(self, inputs: dict) -> torch.Tensor:
        """The training loss of one batch."""
        if self.head == "search":
            query = self.embed(inputs["query"])
            codes, first = batch_codes(self.embed(inputs["code"]))
            scores = SEARCH_SCALE * query @ codes.T
            return F.cross_entropy(scores, first + torch.arange(len(scores), device=scores.device))
        if self.head == "clone":
            cos = (self.embed(inputs["code1"]) * self.embed(inputs["code2"])).sum(-1)
            return F.mse_loss(cos, inputs["label"].to(cos.dtype))
        hidden = self.last_hidden(inputs["seq"])
        labels = inputs["labels"]
        active = labels != -100
        logits, targets = self.lm_logits(hidden[active]), labels[active]
        if processes() == 1:
            return F.cross_entropy(logits, targets)
        return F.cross_entropy(logits, targets, reduction="sum") / tokens_per_process(active)
