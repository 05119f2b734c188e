"""A Dataset task with dict batches: a small transformer classifies variable-length token sequences.

Each sample is a dict ``{"input_ids": (L,), "label": ()}`` with its own length
L; ``collate_fn`` pads a batch to its longest sequence and adds the attention
mask, and ``unpack`` hands the model ``input_ids`` and ``attention_mask`` as
keyword arguments, the way a Hugging Face model takes them. Tune it from the
repository's root::

    python -m tuner study examples/text-classifier.yaml
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset

from tuner.tasks.task import Classifier, Data

PAD = 0  # token id of padding; real tokens are 1 .. vocab - 1


class Sentences(Dataset):
    """``size`` sequences of 4 to ``max_length`` tokens drawn from ``generator``. The label says whether most
    tokens come from the upper half of the vocabulary: the model must look at every token, and ignore padding."""

    def __init__(self, size: int, vocab: int, max_length: int, generator: torch.Generator) -> None:
        lengths = torch.randint(4, max_length + 1, (size,), generator=generator)
        self.sequences = [torch.randint(1, vocab, (int(n),), generator=generator) for n in lengths]
        self.labels = [int((s >= vocab // 2).float().mean() > 0.5) for s in self.sequences]

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.sequences[index], "label": torch.tensor(self.labels[index])}


class Encoder(nn.Module):
    """Token embedding, learned positions, one transformer encoder layer, mean over the real tokens, linear classes."""

    def __init__(self, vocab: int, max_length: int, width: int, classes: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width, padding_idx=PAD)
        self.position = nn.Parameter(torch.randn(max_length, width) * 0.02)
        self.layer = nn.TransformerEncoderLayer(width, nhead=2, dim_feedforward=2 * width, batch_first=True)
        self.head = nn.Linear(width, classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.embed(input_ids) + self.position[: input_ids.shape[1]]
        h = self.layer(h, src_key_padding_mask=attention_mask == 0)
        mask = attention_mask.unsqueeze(-1).to(h.dtype)
        return self.head((h * mask).sum(1) / mask.sum(1))


@dataclass
class TextClassifier(Classifier):
    """Variable-length token sequences, padded per batch with an attention mask; transformer, cross-entropy, accuracy."""

    vocab: int = 50
    max_length: int = 24
    width: int = 32
    train_size: int = 1024
    name: str = "text-classifier"
    metric: str = "accuracy"
    direction: str = "maximize"
    epochs: int = 10
    batch_size: int = 32

    def data(self) -> Data:
        # A fixed seed of the task's own: every trial trains on the same sentences.
        generator = torch.Generator().manual_seed(0)
        sizes = (self.train_size, self.train_size // 4, self.train_size // 4)
        return Data(*(Sentences(n, self.vocab, self.max_length, generator) for n in sizes))

    def collate_fn(self, samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        ids = [s["input_ids"] for s in samples]
        input_ids = pad_sequence(ids, batch_first=True, padding_value=PAD)
        attention_mask = (input_ids != PAD).long()
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": torch.stack([s["label"] for s in samples]),
        }

    def unpack(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}, batch["labels"]

    def model(self) -> nn.Module:
        return Encoder(self.vocab, self.max_length, self.width)
