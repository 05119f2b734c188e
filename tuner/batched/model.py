"""The stacked model: K models of one architecture as one, each member with its own parameters, buffers and batches.

One forward and one backward pass serve every member (``torch.func.functional_call`` under ``torch.func.vmap``,
or a feed-forward stack by hand); whole trainings differ from the same trial run alone only by rounding (the
stacked passes group sums differently), which training amplifies.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from torch.nn import functional as F

from tuner.tasks.task import Data, Split, Task

# vmap warns at every step where an operator has no batching rule and runs member by member
# (attention on the CPU): slower, not wrong. Autograd warns once that a member's gradient is laid
# out unlike its parameter (a view of a row of StackedModel.flat): it is copied, not wrong.
_QUIET = (
    "There is a performance drop because we have not yet implemented the batching rule",
    "grad and param do not obey the gradient layout contract",
)


@contextlib.contextmanager
def stacking(device: torch.device) -> Iterator[None]:
    """Inside: the caller's random state is kept (restored on exit; CUDA's too on a CUDA ``device``) and the
    warnings of stacked training that are no error (see ``_QUIET``) are silent."""
    with own_random_state(device), warnings.catch_warnings():
        for message in _QUIET:
            warnings.filterwarnings("ignore", message=message)
        yield


def own_random_state(device: torch.device) -> contextlib.AbstractContextManager[None]:
    """``torch.random.fork_rng`` for ``device``: the caller's random state is restored on exit."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


def splits(data: Data) -> tuple[Split, Split, Split]:
    """``data``'s train, validation and test splits, in-memory tensors: a population slices them on the device.

    Raises ValueError for Datasets read through DataLoaders or a task with its own loop (which keeps its data):
    :func:`tuner.batched.stackable.why_not_batched` keeps such tasks from ever reaching a population."""
    if isinstance(data.train, Split) and isinstance(data.val, Split) and isinstance(data.test, Split):
        return data.train, data.val, data.test
    raise ValueError("a population trains on in-memory splits (Split), not Datasets or a task's own loop")


def seeded_model(task: Task, seed: int, device: torch.device) -> nn.Module:
    """``task.model()`` on ``device`` built under ``torch.manual_seed(seed)``, as :func:`tuner.train.trainer.train`
    builds it; the caller's random state is left as it was."""
    with own_random_state(device):
        torch.manual_seed(seed)
        return task.model().to(device)


# Modules that act elementwise: on stacked inputs [K, batch, ...] as on [batch, ...] (dropout draws a mask per element).
_ELEMENTWISE = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.GELU,
    nn.SiLU,
    nn.ELU,
    nn.Softplus,
    nn.Identity,
    nn.Dropout,
)
# Modules that act on each channel of [batch, channels, H, W] alone: on the members' channels side by side as on
# one member's.
_CHANNELWISE = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)


def _stackable(layer: nn.Module) -> bool:
    if isinstance(layer, nn.Conv2d):
        return layer.padding_mode == "zeros"
    if isinstance(layer, nn.Flatten):
        return (layer.start_dim, layer.end_dim) == (1, -1)
    return isinstance(layer, (nn.Linear, *_ELEMENTWISE, *_CHANNELWISE))


def _feed_forward_layers(module: nn.Module) -> list[tuple[str, nn.Module]] | None:
    """The layers of a feed-forward stack (an ``nn.Sequential`` of ``nn.Linear``, ``nn.Conv2d``, elementwise and
    channelwise modules, ``nn.Flatten``), each with its name in the module, or None for any other model.

    A ``ReLU`` right before a ``MaxPool2d`` comes after it instead: the outputs and the gradients are the same to the
    bit (max and ReLU commute, and the gradient reaches the same element or none), and ReLU and its backward then run
    on a quarter of the elements (2x2 pooling). In a stacked step of digits-cnn those were a fifth of the time.
    """
    layers = [(str(i), layer) for i, layer in enumerate(module)] if type(module) is nn.Sequential else []
    if not (
        any(isinstance(layer, (nn.Linear, nn.Conv2d)) for _, layer in layers)
        and all(_stackable(layer) for _, layer in layers)
    ):
        return None
    for i in range(len(layers) - 1):
        if type(layers[i][1]) is nn.ReLU and isinstance(layers[i + 1][1], nn.MaxPool2d):
            layers[i], layers[i + 1] = layers[i + 1], layers[i]
    return layers


def _side_by_side(x: torch.Tensor) -> torch.Tensor:
    """``[K, batch, C, H, W]`` -> ``[batch, K*C, H, W]``, channels-last."""
    return x.transpose(0, 1).flatten(1, 2).contiguous(memory_format=torch.channels_last)


def _feed_forward(
    layers: list[tuple[str, nn.Module]], params: dict[str, torch.Tensor], x: torch.Tensor
) -> torch.Tensor:
    """Every member's feed-forward stack on its own inputs ``x`` (``[K, batch, ...]``), its outputs ``[K, batch, ...]``:
    each ``nn.Linear`` as one batched matrix product, each ``nn.Conv2d`` as one convolution grouped by member over
    the members' channels side by side (``[batch, K*C, H, W]``, channels-last, which vmap's grouped convolution is
    not: 1.5x faster here). ``params``: every member's parameters by name, ``[K, *shape]`` each."""
    members, side_by_side = len(x), False
    for name, layer in layers:
        # nn.Linear and nn.Conv2d always have a weight (trained or frozen); a bias only when built with one.
        bias = params.get(f"{name}.bias")
        if isinstance(layer, (nn.Conv2d, *_CHANNELWISE)) and not side_by_side:
            x, side_by_side = _side_by_side(x), True
        elif isinstance(layer, (nn.Linear, nn.Flatten)) and side_by_side:
            x, side_by_side = x.unflatten(1, (members, -1)).transpose(0, 1), False
        if isinstance(layer, nn.Conv2d):
            x = F.conv2d(
                x,
                params[f"{name}.weight"].flatten(0, 1),
                None if bias is None else bias.flatten(),
                layer.stride,
                layer.padding,
                layer.dilation,
                layer.groups * members,
            )
        elif isinstance(layer, nn.Linear):
            rows, weight = x.reshape(members, -1, x.shape[-1]), params[f"{name}.weight"]
            out = (
                torch.bmm(rows, weight.transpose(1, 2))
                if bias is None
                else torch.baddbmm(bias.unsqueeze(1), rows, weight.transpose(1, 2))
            )
            x = out.view(*x.shape[:-1], out.shape[-1])
        elif isinstance(layer, nn.Flatten):
            x = x.flatten(2)
        else:
            x = layer(x)
    return x.unflatten(1, (members, -1)).transpose(0, 1) if side_by_side else x


class StackedModel:
    """K models of one architecture as one, with the loss: parameters and buffers stacked along a leading member
    dimension.

    All of a member's parameters lie in one row of :attr:`flat` (``[K, P]``,
    for the vectorized optimizer); :attr:`params` views them per parameter
    (``[K, *shape]``, the leaves that autograd fills). :meth:`losses` runs
    every member on its own batch (``[K, batch, ...]``) and :meth:`shared`
    on the same inputs: a feed-forward stack of linear and 2-d convolution
    layers by hand (see :func:`_feed_forward`, measured faster here), any other
    model with ``torch.func.vmap`` over ``functional_call`` of one template
    module; the loss always under vmap.
    Dropout draws different masks per member (``randomness="different"``);
    buffers such as BatchNorm's running statistics are each member's own.
    A frozen parameter (``requires_grad=False``) is not in :attr:`flat`: like
    ``torch.optim``, which skips a parameter without a gradient, the population
    never steps it; each member keeps its own copy in :attr:`frozen`
    (``[K, *shape]``), as it keeps its buffers.
    """

    def __init__(
        self, models: list[torch.nn.Module], loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    ) -> None:
        self.module = models[0]
        params, self.buffers = stack_module_state(models)
        trainable = {name for name, p in self.module.named_parameters() if p.requires_grad}
        self.frozen = {name: t.detach() for name, t in params.items() if name not in trainable}
        params = {name: t for name, t in params.items() if name in trainable}
        self.names, self.shapes = list(params), [t.shape[1:] for t in params.values()]
        self.flat = torch.cat([t.detach().flatten(1) for t in params.values()], dim=1)
        self.params = self._views()
        self._layers = _feed_forward_layers(self.module)
        self._loss = vmap(loss, randomness="different")
        self._losses = vmap(
            lambda params, buffers, x, y: loss(self._call(params, buffers, x), y), randomness="different"
        )
        self._shared = vmap(self._call, in_dims=(0, 0, None), randomness="different")

    def _views(self) -> dict[str, torch.Tensor]:
        parts = self.flat.split([math.prod(shape) for shape in self.shapes], dim=1)
        return {
            name: part.view(len(self.flat), *shape).detach().requires_grad_()
            for name, part, shape in zip(self.names, parts, self.shapes)
        }

    def _call(self, params: dict[str, torch.Tensor], fixed: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.module, (params, fixed), (x,))

    def _fixed(self) -> dict[str, torch.Tensor]:
        """What a member has besides the parameters it trains: its buffers and its frozen parameters."""
        return self.buffers | self.frozen

    def losses(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Every member's loss on its own batch: ``x[k]``, ``y[k]`` for member ``k``; ``[K]``."""
        if self._layers is not None:
            return self._loss(_feed_forward(self._layers, self.params | self.frozen, x), y)
        return self._losses(self.params, self._fixed(), x, y)

    def shared(self, x: torch.Tensor) -> torch.Tensor:
        """Every member's output for the same inputs ``x``: ``[K, len(x), ...]``."""
        if self._layers is not None:
            return _feed_forward(self._layers, self.params | self.frozen, x.expand(len(self.flat), *x.shape))
        return self._shared(self.params, self._fixed(), x)

    def grad(self) -> torch.Tensor:
        """Every member's gradients after a backward pass, ``[K, P]`` like :attr:`flat`; the parameters' ``.grad``
        are cleared. Raises RuntimeError when a trained parameter got no gradient."""
        grads = {name: p.grad for name, p in self.params.items()}
        missing = [name for name, g in grads.items() if g is None]
        if missing:
            raise RuntimeError(
                f"parameters {', '.join(missing)} got no gradient (torch.optim would skip them; a population cannot)"
            )
        grad = torch.cat([g.flatten(1) for g in grads.values() if g is not None], dim=1)
        for p in self.params.values():
            p.grad = None
        return grad

    def train(self, mode: bool = True) -> None:
        """Training mode (default) or, with ``mode=False``, evaluation mode for every member (dropout, BatchNorm)."""
        self.module.train(mode)

    @torch.no_grad()
    def load(self, row: int, model: torch.nn.Module) -> None:
        """Member ``row`` takes ``model``'s parameters (frozen ones too) and buffers."""
        own = dict(model.named_parameters())
        self.flat[row].copy_(torch.cat([own[name].flatten() for name in self.names]))
        for name, own_buffer in model.named_buffers():
            self.buffers[name][row].copy_(own_buffer)
        for name, frozen in self.frozen.items():
            frozen[row].copy_(own[name])

    def keep(self, rows: list[int]) -> None:
        """Keep only the members ``rows``, in that order (new tensors)."""
        index = torch.tensor(rows, dtype=torch.long, device=self.flat.device)
        self.flat = self.flat.index_select(0, index)
        self.params = self._views()
        self.buffers = {name: t.index_select(0, index) for name, t in self.buffers.items()}
        self.frozen = {name: t.index_select(0, index) for name, t in self.frozen.items()}
