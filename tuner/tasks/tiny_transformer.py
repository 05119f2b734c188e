"""``tiny-transformer``: a small transformer encoder that learns to reverse sequences of tokens."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from tuner.tasks.task import Classifier, Data, Split, generated


class SinusoidalPositions(nn.Module):
    """Adds the sinusoidal positional encoding of Vaswani et al. (2017); a buffer, so it moves with the model."""

    encoding: torch.Tensor  # (length, width), a buffer

    def __init__(self, length: int, width: int) -> None:
        super().__init__()
        position = torch.arange(length).unsqueeze(1)
        frequency = torch.exp(torch.arange(0, width, 2) * (-math.log(10000.0) / width))
        encoding = torch.zeros(length, width)
        encoding[:, 0::2] = torch.sin(position * frequency)
        encoding[:, 1::2] = torch.cos(position * frequency[: width // 2])
        self.register_buffer("encoding", encoding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.encoding[: x.shape[1]]


class Encoder(nn.Module):
    """Token embedding, positional encoding, pre-norm encoder layers (attention, feed-forward), final layer norm,
    per-token classes.

    The embedding is not scaled by sqrt(width): scaled, its N(0, 1) entries
    drown the positions (amplitude 1) that reversal depends on.
    """

    def __init__(self, vocab: int, length: int, width: int, heads: int, layers: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.positions = SinusoidalPositions(length, width)
        layer = nn.TransformerEncoderLayer(
            width, heads, dim_feedforward=2 * width, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(width), enable_nested_tensor=False)
        self.out = nn.Linear(width, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(self.encoder(self.positions(self.embed(tokens))))


@dataclass
class TinyTransformer(Classifier):
    """Sequence reversal, transformer encoder (embedding, sine positions, attention, layer norm), per-token accuracy.

    Inputs are ``length`` tokens drawn uniformly from ``vocab``; the target is
    the same sequence reversed, so chance accuracy is 1/vocab. ``train_size``
    training sequences, a quarter as many each for validation and test
    (generated from a fixed seed). ``width`` must be divisible by ``heads``.
    """

    length: int = 8
    vocab: int = 10
    width: int = 32
    heads: int = 4
    layers: int = 2
    train_size: int = 2000
    name: str = "tiny-transformer"
    metric: str = "accuracy"
    direction: str = "maximize"
    epochs: int = 10
    batch_size: int = 64

    def __post_init__(self) -> None:
        if self.width % self.heads or self.width % 2:
            raise ValueError(f"width={self.width} is not allowed with heads={self.heads} (an even multiple of heads)")

    def data(self) -> Data:
        def sample(n: int, generator: torch.Generator) -> Split:
            tokens = torch.randint(0, self.vocab, (n, self.length), generator=generator)
            return Split(tokens, tokens.flip(1))

        held_out = max(1, self.train_size // 4)
        return generated(sample, (self.train_size, held_out, held_out), seed=45)

    def model(self) -> nn.Module:
        return Encoder(self.vocab, self.length, self.width, self.heads, self.layers)
