"""One encoder, four heads: the paper's (UniXcoder's) model for each downstream task.

- code search: bi-encoder with shared weights; masked mean pooling, L2 norm,
  in-batch InfoNCE on 20 x cosine (query i's code is the positive, the other codes negatives);
- clone detection: the same embedding; MSE between cos(code1, code2) and the 0/1 label;
- summarization, generation: the encoder as seq2seq through a UniLM mask
  (bidirectional source, causal target), LM head tied to the word embeddings;
- line completion: the encoder as a decoder (causal mask), same tied LM head.

The heads add no parameters: the tied LM head is the embedding matrix (so
Telly-K, which freezes the embeddings, freezes the output projection too).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from telly.finetuning.caching import top

SEARCH_SCALE = 20.0  # UniXcoder's temperature for in-batch InfoNCE

HEADS = {
    "code_search": "search",
    "clone_detection": "clone",
    "code_summarization": "lm",
    "code_generation": "lm",
    "line_completion": "lm",
}


def mean_pool(hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean over each sequence's real tokens, L2-normalised."""
    keep = (torch.arange(hidden.shape[1], device=hidden.device)[None, :] < lengths[:, None]).to(hidden.dtype)
    pooled = (hidden * keep[..., None]).sum(1) / keep.sum(1, keepdim=True)
    return F.normalize(pooled, p=2, dim=-1)


class TaskModel(nn.Module):
    """The encoder plus its task's loss. With ``k`` set, batches that carry cached
    hidden state k (``batch["hidden"]``) run only layers k..L-1."""

    def __init__(self, encoder: nn.Module, task: str, k: int | None = None):
        super().__init__()
        self.encoder, self.task, self.k, self.head = encoder, task, k, HEADS[task]

    def last_hidden(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if "hidden" in batch:
            return top(self.encoder, batch["hidden"], batch["mask"], self.k or 0)
        return self.encoder(input_ids=batch["ids"], attention_mask=batch["mask"]).last_hidden_state

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return mean_pool(self.last_hidden(batch), batch["lengths"])

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden @ self.encoder.embeddings.word_embeddings.weight.T

    def forward(self, inputs: dict) -> torch.Tensor:
        """The training loss of one batch."""
        if self.head == "search":
            query, code = self.embed(inputs["query"]), self.embed(inputs["code"])
            scores = SEARCH_SCALE * query @ code.T
            return F.cross_entropy(scores, torch.arange(len(scores), device=scores.device))
        if self.head == "clone":
            cos = (self.embed(inputs["code1"]) * self.embed(inputs["code2"])).sum(-1)
            return F.mse_loss(cos, inputs["label"].to(cos.dtype))
        hidden = self.last_hidden(inputs["seq"])
        labels = inputs["labels"]
        active = labels != -100
        return F.cross_entropy(self.lm_logits(hidden[active]), labels[active])
