"""Models for the deep experiments: a small CNN, an MLP and a ResNet18 for 32x32 inputs.

The activation is switchable (``relu``, ``softplus``, ``elu``) because the reviewers of the paper
asked whether the Hessian analysis survives twice-differentiable activations: a ReLU network's
Hessian vanishes almost everywhere except through the softmax and the last layer, while softplus
and ELU give curvature in every layer (ALGORITHM.md section 6).

Every constructor validates its arguments and raises ``ValueError``/``TypeError`` naming the
parameter. :func:`make_model` builds any of them from a name, for the command line.

Example:
    >>> import torch
    >>> net = SmallCNN(input_shape=(1, 28, 28), num_classes=10, activation="softplus")
    >>> net(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

__all__ = ["ACTIVATIONS", "MODELS", "MLP", "SmallCNN", "ResNet18", "make_activation",
           "make_model", "parameter_count"]

ACTIVATIONS = ("relu", "softplus", "elu")
MODELS = ("cnn", "mlp", "resnet18")


def make_activation(name: str) -> nn.Module:
    """A fresh activation module from its name.

    Args:
        name: ``"relu"`` (piecewise linear: zero second derivative almost everywhere),
            ``"softplus"`` (log(1 + e^x), smooth) or ``"elu"`` (x for x > 0, e^x - 1 otherwise;
            its second derivative jumps at 0 but is non-zero for x < 0).

    Raises:
        ValueError: an unknown name.
    """
    if not isinstance(name, str) or name.lower() not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {name!r}")
    return {"relu": nn.ReLU, "softplus": nn.Softplus, "elu": nn.ELU}[name.lower()]()


def _check_shape(input_shape: Sequence[int], rank: int | None = None) -> tuple[int, ...]:
    try:
        shape = tuple(input_shape)
    except TypeError:
        raise TypeError(f"input_shape must be a sequence of ints, got {input_shape!r}") from None
    if not shape or any(not isinstance(s, int) or isinstance(s, bool) or s < 1 for s in shape):
        raise ValueError(f"input_shape must hold positive ints, got {input_shape!r}")
    if rank is not None and len(shape) != rank:
        raise ValueError(f"input_shape must have {rank} entries (channels, height, width), "
                         f"got {input_shape!r}")
    return shape


def _check_classes(num_classes: int) -> int:
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    return num_classes


class MLP(nn.Module):
    """Fully connected classifier: flatten, then ``Linear -> activation`` per hidden layer.

    ``f(x) = W_L s(... s(W_1 vec(x) + b_1) ...) + b_L`` with ``s`` the chosen activation; the
    output is the logits (use ``nn.CrossEntropyLoss``).

    Args:
        input_shape: shape of one sample, e.g. ``(1, 28, 28)``; flattened to ``prod(shape)``.
        num_classes: output logits, >= 2.
        hidden: widths of the hidden layers (may be empty: logistic regression).
        activation: ``relu``, ``softplus`` or ``elu``.
        batchnorm: a ``BatchNorm1d`` after each hidden ``Linear`` (before the activation).
        dropout: a ``Dropout(dropout)`` after each hidden activation (0: none).

    Raises:
        ValueError, TypeError: a bad shape, class count, width, activation or dropout.

    Example:
        >>> MLP((1, 28, 28), 10, hidden=(32,))(torch.zeros(4, 1, 28, 28)).shape
        torch.Size([4, 10])
    """

    def __init__(self, input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10,
                 hidden: Sequence[int] = (128, 64), activation: str = "relu",
                 batchnorm: bool = False, dropout: float = 0.0):
        super().__init__()
        if not (isinstance(dropout, (int, float)) and 0.0 <= dropout < 1.0):
            raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}")
        shape = _check_shape(input_shape)
        _check_classes(num_classes)
        hidden = tuple(hidden)
        if any(not isinstance(h, int) or isinstance(h, bool) or h < 1 for h in hidden):
            raise ValueError(f"hidden must hold positive ints, got {hidden!r}")
        make_activation(activation)  # validate once, before building layers
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(shape)
        for h in hidden:
            layers.append(nn.Linear(width, h))
            if batchnorm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(make_activation(activation))
            if dropout:
                layers.append(nn.Dropout(float(dropout)))
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)
        self.input_shape, self.num_classes, self.activation = shape, num_classes, activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """Two convolution blocks and two linear layers (LeNet-like), for MNIST-sized inputs.

    ``conv5x5(width) -> s -> maxpool2 -> conv5x5(2 width) -> s -> maxpool2 -> linear(hidden) -> s
    -> linear(num_classes)``, with ``s`` the activation; ``padding=2`` keeps the spatial size
    through each convolution, so any input of at least 4x4 works.

    Args:
        input_shape: ``(channels, height, width)`` of one sample.
        num_classes: output logits, >= 2.
        width: channels of the first convolution (the second has twice as many).
        hidden: width of the hidden linear layer.
        activation: ``relu``, ``softplus`` or ``elu``.

    Raises:
        ValueError, TypeError: a bad shape, class count, width or activation.

    Example:
        >>> SmallCNN((3, 32, 32), 10, width=4)(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(self, input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10,
                 width: int = 16, hidden: int = 64, activation: str = "relu"):
        super().__init__()
        c, h, w = _check_shape(input_shape, rank=3)
        _check_classes(num_classes)
        for name, value in (("width", width), ("hidden", hidden)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if h < 4 or w < 4:
            raise ValueError(f"input_shape must be at least 4x4 (two 2x2 poolings), "
                             f"got {input_shape!r}")
        act = make_activation
        self.features = nn.Sequential(
            nn.Conv2d(c, width, 5, padding=2), act(activation), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 5, padding=2), act(activation), nn.MaxPool2d(2),
            nn.Flatten())
        flat = 2 * width * (h // 4) * (w // 4)
        self.classifier = nn.Sequential(nn.Linear(flat, hidden), act(activation),
                                        nn.Linear(hidden, num_classes))
        self.input_shape, self.num_classes, self.activation = (c, h, w), num_classes, activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class _BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and an identity (or 1x1 projection) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, activation: str):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act1, self.act2 = make_activation(activation), make_activation(activation)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet18 for 32x32 inputs (CIFAR-style), the paper's model C1.

    A 3x3 stem (no 7x7 convolution, no max-pooling, since 32x32 inputs are small), four stages
    of two basic blocks with ``base, 2 base, 4 base, 8 base`` channels (strides 1, 2, 2, 2),
    global average pooling and a linear classifier: 11.2 M parameters at ``base=64``.

    Args:
        input_shape: ``(channels, height, width)``; any size >= 8x8 works thanks to the global
            pooling, 32x32 is what it is built for.
        num_classes: output logits, >= 2.
        base: channels of the first stage (64 in the original; smaller for tests).
        activation: ``relu``, ``softplus`` or ``elu``.

    Raises:
        ValueError, TypeError: a bad shape, class count, width or activation.

    Example:
        >>> ResNet18((3, 32, 32), 10, base=4)(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(self, input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10,
                 base: int = 64, activation: str = "relu"):
        super().__init__()
        c, h, w = _check_shape(input_shape, rank=3)
        _check_classes(num_classes)
        if not isinstance(base, int) or isinstance(base, bool) or base < 1:
            raise ValueError(f"base must be a positive int, got {base!r}")
        if h < 8 or w < 8:
            raise ValueError(f"input_shape must be at least 8x8 (three stride-2 stages), "
                             f"got {input_shape!r}")
        make_activation(activation)
        self.stem = nn.Sequential(nn.Conv2d(c, base, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(base), make_activation(activation))
        blocks, cin = [], base
        for i, stride in enumerate((1, 2, 2, 2)):
            cout = base * 2 ** i
            blocks += [_BasicBlock(cin, cout, stride, activation),
                       _BasicBlock(cout, cout, 1, activation)]
            cin = cout
        self.layers = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(cin, num_classes))
        self.input_shape, self.num_classes, self.activation = (c, h, w), num_classes, activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(self.stem(x)))


def make_model(name: str, input_shape: Sequence[int], num_classes: int, *,
               activation: str = "relu", width: int | None = None,
               batchnorm: bool = False, dropout: float = 0.0) -> nn.Module:
    """Build a model from its command-line name.

    Args:
        name: ``"cnn"`` (:class:`SmallCNN`), ``"mlp"`` (:class:`MLP`, hidden widths
            ``(2 width, width)``) or ``"resnet18"`` (:class:`ResNet18`, ``base = width``).
        input_shape: shape of one sample.
        num_classes: output logits.
        activation: ``relu``, ``softplus`` or ``elu``.
        width: the model's width knob (defaults: cnn 16, mlp 64, resnet18 64).
        batchnorm, dropout: for ``mlp`` only (see :class:`MLP`).

    Raises:
        ValueError: an unknown name (and whatever the constructor raises).

    Example:
        >>> make_model("mlp", (1, 8, 8), 3, width=4)(torch.zeros(1, 1, 8, 8)).shape
        torch.Size([1, 3])
    """
    if not isinstance(name, str) or name.lower() not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}, got {name!r}")
    name = name.lower()
    if name != "mlp" and (batchnorm or dropout):
        raise ValueError(f"batchnorm and dropout are options of the mlp model, not {name!r}")
    if name == "cnn":
        return SmallCNN(input_shape, num_classes, width=width or 16, activation=activation)
    if name == "mlp":
        w = width or 64
        return MLP(input_shape, num_classes, hidden=(2 * w, w), activation=activation,
                   batchnorm=batchnorm, dropout=dropout)
    return ResNet18(input_shape, num_classes, base=width or 64, activation=activation)


def parameter_count(name: str, input_shape: Sequence[int], num_classes: int, *,
                    activation: str = "relu", width: int | None = None) -> int:
    """The number of parameters :func:`make_model` would build, without allocating them.

    The model is built on PyTorch's ``meta`` device (shapes only, no storage), so a width that
    would need terabytes is counted in milliseconds; a command can then refuse it before
    allocating anything.

    Raises:
        ValueError, TypeError: as :func:`make_model`.

    Example:
        >>> parameter_count("mlp", (1, 8, 8), 3, width=4) == sum(
        ...     p.numel() for p in make_model("mlp", (1, 8, 8), 3, width=4).parameters())
        True
    """
    with torch.device("meta"):
        model = make_model(name, input_shape, num_classes, activation=activation, width=width)
    return int(sum(p.numel() for p in model.parameters()))
