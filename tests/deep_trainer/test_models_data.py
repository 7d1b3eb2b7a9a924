"""Models (shapes, activations, parameter counts, errors) and data loaders (checksums, formats)."""

from __future__ import annotations

import hashlib
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from hessbatch.deep import (MLP, ResNet18, SmallCNN, load_cifar10, load_data, load_mnist5k,
                            make_activation, make_model, split_dataset,
                            synthetic_classification)
from hessbatch.deep._data import MNIST5K_PATH, MNIST5K_SHA256


# ------------------------------------------------------------------------------------ models

@pytest.mark.parametrize("activation, cls", [("relu", nn.ReLU), ("softplus", nn.Softplus),
                                             ("elu", nn.ELU)])
@pytest.mark.parametrize("name, shape", [("cnn", (1, 28, 28)), ("mlp", (1, 28, 28)),
                                         ("resnet18", (3, 32, 32))])
def test_every_model_and_activation_gives_logits_and_uses_only_that_activation(
        name, shape, activation, cls):
    torch.manual_seed(0)
    model = make_model(name, shape, 10, activation=activation, width=4)
    out = model(torch.rand(3, *shape))
    assert out.shape == (3, 10) and torch.isfinite(out).all()
    kinds = {type(m) for m in model.modules()} & {nn.ReLU, nn.Softplus, nn.ELU}
    assert kinds == {cls}


def test_resnet18_has_the_standard_cifar_parameter_count():
    # CIFAR ResNet18 (3x3 stem, 64-128-256-512 channels, 10 classes): 11,173,962 parameters.
    assert sum(p.numel() for p in ResNet18().parameters()) == 11_173_962


def test_small_cnn_and_mlp_parameter_counts_follow_the_documented_layout():
    cnn = SmallCNN((1, 28, 28), 10, width=16, hidden=64)
    expected = (16 * 25 + 16) + (32 * 16 * 25 + 32) + (32 * 7 * 7 * 64 + 64) + (64 * 10 + 10)
    assert sum(p.numel() for p in cnn.parameters()) == expected
    mlp = MLP((1, 8, 8), 3, hidden=(5,))
    assert sum(p.numel() for p in mlp.parameters()) == 64 * 5 + 5 + 5 * 3 + 3


def test_activation_second_derivative_is_zero_only_for_relu():
    # The reviewers' point: ReLU's second derivative is zero almost everywhere, so the only
    # curvature of a ReLU network comes from the loss; softplus and ELU have their own.
    x = torch.linspace(-2, 2, 9, dtype=torch.float64, requires_grad=True)
    for name, zero in (("relu", True), ("softplus", False), ("elu", False)):
        act = make_activation(name)
        (g,) = torch.autograd.grad(act(x).sum(), x, create_graph=True)
        if g.requires_grad:
            (h,) = torch.autograd.grad(g.sum(), x)
        else:
            h = torch.zeros_like(x)
        assert bool((h == 0).all()) == zero, name


@pytest.mark.parametrize("call, match", [
    (lambda: make_activation("tanh"), "activation"),
    (lambda: make_model("vgg", (1, 28, 28), 10), "model"),
    (lambda: MLP((1, 28, 28), 1), "num_classes"),
    (lambda: MLP((1, 0, 28), 10), "input_shape"),
    (lambda: MLP((1, 28, 28), 10, hidden=(0,)), "hidden"),
    (lambda: SmallCNN((28, 28), 10), "input_shape"),
    (lambda: SmallCNN((1, 3, 3), 10), "input_shape"),
    (lambda: SmallCNN((1, 28, 28), 10, width=0), "width"),
    (lambda: ResNet18((3, 32, 32), 10, base=0), "base"),
    (lambda: ResNet18((3, 4, 4), 10), "input_shape"),
])
def test_bad_model_arguments_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ------------------------------------------------------------------------------------ mnist5k

def test_mnist5k_loads_checked_scaled_and_balanced():
    ds = load_mnist5k()
    x, y = ds.tensors
    assert x.shape == (5000, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert torch.bincount(y).tolist() == [500] * 10
    with np.load(MNIST5K_PATH) as npz:
        assert torch.equal(x[:, 0] * 255, torch.from_numpy(npz["images"]).float())
    assert hashlib.sha256(MNIST5K_PATH.read_bytes()).hexdigest() == MNIST5K_SHA256


def test_mnist5k_altered_or_missing_file_is_an_error(tmp_path):
    bad = tmp_path / "mnist5k.npz"
    data = bytearray(MNIST5K_PATH.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        load_mnist5k(bad)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_mnist5k(tmp_path / "missing.npz")
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, pictures=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(ValueError, match="'images' and 'labels'"):
        load_mnist5k(wrong, sha256=None)
    np.savez(wrong, images=np.zeros((2, 28, 28), np.uint8), labels=np.array([0, 12], np.uint8))
    with pytest.raises(ValueError, match="labels must lie in 0..9"):
        load_mnist5k(wrong, sha256=None)
    text = tmp_path / "text.npz"
    text.write_text("not an archive")
    with pytest.raises(ValueError):
        load_mnist5k(text, sha256=None)


def test_stratified_split_is_seeded_disjoint_and_keeps_class_shares():
    ds = load_mnist5k()
    train, test = split_dataset(ds, 0.2, seed=3)
    assert len(train) == 4000 and len(test) == 1000
    assert torch.bincount(test.tensors[1]).tolist() == [100] * 10
    again = split_dataset(ds, 0.2, seed=3)[1]
    other = split_dataset(ds, 0.2, seed=4)[1]
    assert torch.equal(test.tensors[0], again.tensors[0])
    assert not torch.equal(test.tensors[0], other.tensors[0])
    # disjoint and complete: the multiset of images is preserved (sums are exact in float64)
    total = ds.tensors[0].double().sum((1, 2, 3)).sort().values
    parts = torch.cat([train.tensors[0], test.tensors[0]]).double().sum((1, 2, 3)).sort().values
    assert torch.equal(total, parts)
    for bad in (0.0, 1.0, -0.1, "x"):
        with pytest.raises(ValueError, match="test_fraction"):
            split_dataset(ds, bad)
    with pytest.raises(TypeError, match="TensorDataset"):
        split_dataset([1, 2, 3])


# ------------------------------------------------------------------------------------ cifar10

def _write_cifar_batch(path, data, labels, key_type=bytes):
    k = (lambda s: s.encode()) if key_type is bytes else (lambda s: s)
    with open(path, "wb") as f:
        pickle.dump({k("batch_label"): k("tiny"), k("labels"): list(labels), k("data"): data,
                     k("filenames"): [k(f"{i}.png") for i in range(len(labels))]}, f)


def test_cifar10_reader_uses_the_python_pickle_layout(tmp_path):
    rng = np.random.default_rng(0)
    train1 = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
    train2 = rng.integers(0, 256, (2, 3072), dtype=np.uint8)
    test = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
    _write_cifar_batch(tmp_path / "data_batch_1", train1, [0, 1, 2])
    _write_cifar_batch(tmp_path / "data_batch_2", train2, [9, 3])
    _write_cifar_batch(tmp_path / "test_batch", test, [4, 5, 6, 7])
    tr = load_cifar10(tmp_path, partial=True)  # 2 of the 5 training batches, asked for
    te = load_cifar10(tmp_path, train=False)
    assert tr.tensors[0].shape == (5, 3, 32, 32) and tr.tensors[1].tolist() == [0, 1, 2, 9, 3]
    assert te.tensors[1].tolist() == [4, 5, 6, 7]
    # row layout: 1024 red then 1024 green then 1024 blue, each 32x32 row-major
    x = tr.tensors[0]
    assert x[0, 0, 0, 0] * 255 == float(train1[0, 0])
    assert x[0, 0, 1, 2] * 255 == float(train1[0, 32 + 2])
    assert x[1, 1, 3, 4] * 255 == float(train1[1, 1024 + 3 * 32 + 4])
    assert x[4, 2, 31, 31] * 255 == float(train2[1, 3071])
    bundle = load_data(f"cifar10-partial:{tmp_path}")
    assert bundle.input_shape == (3, 32, 32) and len(bundle.train) == 5 and len(bundle.test) == 4


def test_cifar10_reader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="folder not found"):
        load_cifar10(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="none of"):
        load_cifar10(tmp_path)
    (tmp_path / "data_batch_1").write_bytes(b"garbage")
    with pytest.raises(FileNotFoundError, match="lacks data_batch_2"):
        load_cifar10(tmp_path)
    with pytest.raises(ValueError, match="not a CIFAR-10"):
        load_cifar10(tmp_path, partial=True)
    _write_cifar_batch(tmp_path / "data_batch_1", np.zeros((2, 100), np.uint8), [0, 1])
    with pytest.raises(ValueError, match=r"\(N, 3072\)"):
        load_cifar10(tmp_path, partial=True)
    _write_cifar_batch(tmp_path / "data_batch_1", np.zeros((2, 3072), np.uint8), [0, 10])
    with pytest.raises(ValueError, match="labels"):
        load_cifar10(tmp_path, partial=True)
    with open(tmp_path / "data_batch_1", "wb") as f:
        pickle.dump([1, 2, 3], f)
    with pytest.raises(ValueError, match="expected a dict"):
        load_cifar10(tmp_path, partial=True)


# ------------------------------------------------------------------------------------ synthetic

def test_synthetic_data_is_seeded_in_range_and_learnable_by_templates():
    a = synthetic_classification(300, (1, 8, 8), 3, seed=5)
    b = synthetic_classification(300, (1, 8, 8), 3, seed=5)
    c = synthetic_classification(300, (1, 8, 8), 3, seed=6)
    assert all(torch.equal(u, v) for u, v in zip(a.tensors, b.tensors))
    assert not torch.equal(a.tensors[0], c.tensors[0])
    x, y = a.tensors
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    # nearest class mean classifies far better than chance (1/3): the problem is learnable
    means = torch.stack([x[y == k].mean(0) for k in range(3)])
    pred = ((x[:, None] - means[None]) ** 2).sum((2, 3, 4)).argmin(1)
    assert float((pred == y).float().mean()) > 0.9


@pytest.mark.parametrize("spec", ["foo", "cifar10", "mnist5k:x", "synthetic:abc",
                                  "synthetic:10:1x0x8", "synthetic:10:1x8x8:9"])
def test_bad_data_specs_are_errors(spec):
    with pytest.raises(ValueError):
        load_data(spec)


def test_synthetic_spec_sets_size_and_shape():
    b = load_data("synthetic:50:3x8x8", seed=1)
    assert b.input_shape == (3, 8, 8) and len(b.train) + len(b.test) == 50
    with pytest.raises(ValueError, match="n must be"):
        synthetic_classification(0)
    with pytest.raises(ValueError, match="noise"):
        synthetic_classification(5, noise=float("nan"))

