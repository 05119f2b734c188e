"""The evidence tasks are of the kinds they test: a bag-of-words step touches few embedding rows, the drifting target
moves during training, logistic regression's loss is convex."""

from __future__ import annotations

import math

import torch

from tuner.tasks.check import load_data
from tuner.tasks.loading import load_task


def test_a_bag_of_words_step_leaves_most_embedding_rows_without_a_gradient():
    task = load_task("bag-of-words")
    data = load_data(task, torch.device("cpu"))
    model = task.model()
    words, labels = data.train.x[: task.batch_size], data.train.y[: task.batch_size]
    task.loss(model(words), labels).backward()
    touched = (model.embedding.weight.grad != 0).any(1)
    assert touched.sum() == len(words.unique())
    assert touched.float().mean() < 0.3  # measured with the defaults: 468 of 2,000 rows on average


def test_the_most_frequent_words_carry_no_signal_as_stop_words():
    task = load_task("bag-of-words", {"length": 1})  # one word a document: its label is the sign of its score
    split = task.data().train
    common = split.x[:, 0] < task.common  # the words are numbered by frequency, most frequent first
    assert common.float().mean() > 0.3 and not split.y[common].any()
    assert split.y[~common].float().mean() > 0.05


def test_the_drifting_target_turns_during_training_and_stands_still_in_evaluation():
    task = load_task("drifting-regression")
    data = load_data(task, torch.device("cpu"))
    model = task.model()
    a = task.circle()[0]
    with torch.no_grad():
        model.linear.weight.copy_(a)  # the true weights at the start: the noise floor
    x, y = data.val.x, data.val.y

    def loss() -> float:
        model.eval()
        with torch.no_grad():
            return task.loss(model(x), y).item()

    start = loss()
    assert math.isclose(start, task.noise**2, rel_tol=0.2)
    assert loss() == start  # evaluation does not move the target
    model.train()
    with torch.no_grad():
        for _ in range(task.period // 4):  # a quarter turn of training steps
            model(x[:1])
    assert loss() > 100 * start


def test_logistic_regression_loss_is_convex_along_a_line_between_two_models():
    task = load_task("logistic-regression")
    data = load_data(task, torch.device("cpu"))
    torch.manual_seed(0)
    ends = [10 * torch.nn.utils.parameters_to_vector(task.model().parameters()) for _ in range(2)]
    model = task.model()

    def loss(t: float) -> float:
        torch.nn.utils.vector_to_parameters((1 - t) * ends[0] + t * ends[1], model.parameters())
        with torch.no_grad():
            return task.loss(model(data.train.x), data.train.y).item()

    values = [loss(t / 10) for t in range(11)]
    for i in range(1, 10):
        assert values[i] <= (values[i - 1] + values[i + 1]) / 2 + 1e-6
