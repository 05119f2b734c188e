"""``bag-of-words``: sparse gradients. Synthetic documents classified from the mean of their words' embeddings."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tuner.tasks.task import Classifier, Data, Split, generated


class BagOfWords(nn.Module):
    """``nn.EmbeddingBag`` (mean of a document's word vectors), then a linear layer to the classes."""

    def __init__(self, vocabulary: int, dim: int, classes: int) -> None:
        super().__init__()
        self.embedding = nn.EmbeddingBag(vocabulary, dim, mode="mean")
        self.out = nn.Linear(dim, classes)

    def forward(self, words: torch.Tensor) -> torch.Tensor:
        return self.out(self.embedding(words))


@dataclass
class BagOfWordsTask(Classifier):
    """Sparse gradients: synthetic documents classified by the mean of their words' embeddings.

    Documents of ``length`` words drawn from a Zipf law over ``vocabulary`` words; the label is the sign of the sum
    of the words' hidden scores, which only ``informative`` words chosen at random outside the ``common`` most
    frequent ones have (the others score 0). The frequent words carry no signal, as stop words do: their gradients,
    at every step, cap the learning rate that one rate for every row (SGD's) can take, while the rare words that
    decide the label need a large one.

    A batch of 64 documents looks up at most 64·``length`` of the embedding's rows, mostly the frequent ones (with
    the defaults, 468 of the 2,000 on average): the gradient of the embedding is zero in most rows at most steps, and
    the rare informative words get a gradient now and then (the case made for Adam's per-parameter rates). The
    defaults keep the model (16k embedding weights) small for its 4,000 training documents, so that it learns before
    it overfits. Accuracy; 4,000/1,000/1,000 documents.
    """

    vocabulary: int = 2000
    length: int = 20
    informative: int = 400
    common: int = 50
    dim: int = 8
    name: str = "bag-of-words"
    metric: str = "accuracy"
    direction: str = "maximize"
    epochs: int = 10
    batch_size: int = 64

    def __post_init__(self) -> None:
        if self.common < 0 or not 0 < self.informative <= self.vocabulary - self.common or self.length < 1:
            raise ValueError(
                f"informative={self.informative}, common={self.common}, length={self.length}: not allowed "
                "(common >= 0, 0 < informative <= vocabulary - common, length >= 1)"
            )

    def data(self) -> Data:
        generator = torch.Generator().manual_seed(47)
        zipf = 1.0 / torch.arange(1, self.vocabulary + 1, dtype=torch.float64)
        scores = torch.zeros(self.vocabulary)
        chosen = self.common + torch.randperm(self.vocabulary - self.common, generator=generator)[: self.informative]
        scores[chosen] = torch.randn(self.informative, generator=generator)

        def sample(n: int, gen: torch.Generator) -> Split:
            words = torch.multinomial(zipf, n * self.length, replacement=True, generator=gen).reshape(n, self.length)
            return Split(words, (scores[words].sum(1) > 0).long())

        return generated(sample, (4000, 1000, 1000), seed=48)

    def model(self) -> nn.Module:
        return BagOfWords(self.vocabulary, self.dim, 2)
