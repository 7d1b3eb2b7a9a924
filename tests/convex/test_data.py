"""Data of the convex backend: mushroom encoding, checksum, split, svmlight, array checks."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest

from hessbatch.convex import (MUSHROOM_SHA256, check_arrays, load_mushroom, load_svmlight,
                              split_dataset)
from hessbatch.convex._data import MUSHROOM_ATTRIBUTES, _mushroom_path


@pytest.fixture(scope="module")
def ds():
    return load_mushroom(seed=0)


def test_shipped_file_has_the_documented_checksum():
    with open(_mushroom_path(), "rb") as fh:
        assert hashlib.sha256(fh.read()).hexdigest() == MUSHROOM_SHA256


def test_mushroom_encoding_shapes_and_one_hot(ds):
    assert ds.X_train.shape == (6905, 117) and ds.X_val.shape == (1219, 117)
    for X in (ds.X_train, ds.X_val):
        assert X.dtype == np.float64 and X.flags.c_contiguous
        assert set(np.unique(X)) == {0.0, 1.0}
        assert np.all(X.sum(axis=1) == 22)           # one value per attribute
    assert set(np.unique(ds.y_train)) == {0.0, 1.0}
    # 3916 poisonous rows in the whole file (UCI's documentation)
    assert ds.y_train.sum() + ds.y_val.sum() == 3916
    assert len(ds.feature_names) == 117
    # each attribute's block has exactly one 1 per row
    X = np.vstack([ds.X_train, ds.X_val])
    for attr in MUSHROOM_ATTRIBUTES:
        cols = [j for j, name in enumerate(ds.feature_names) if name.split("=")[0] == attr]
        assert np.all(X[:, cols].sum(axis=1) == 1), attr
    # the constant veil-type column is the intercept
    j = ds.feature_names.index("veil-type=p")
    assert np.all(X[:, j] == 1)


def test_first_file_row_is_encoded_as_written(ds):
    # row 0 of the file: p,x,s,n,t,p,f,c,n,k,e,e,s,s,w,w,p,w,o,p,k,s,u
    codes = "x,s,n,t,p,f,c,n,k,e,e,s,s,w,w,p,w,o,p,k,s,u".split(",")
    want = {f"{a}={c}" for a, c in zip(MUSHROOM_ATTRIBUTES, codes)}
    where = np.flatnonzero(ds.train_rows == 0)
    X, y = (ds.X_train, ds.y_train) if where.size else (ds.X_val, ds.y_val)
    i = where[0] if where.size else np.flatnonzero(ds.val_rows == 0)[0]
    got = {ds.feature_names[j] for j in np.flatnonzero(X[i])}
    assert got == want and y[i] == 1.0


def test_split_is_a_seeded_partition(ds):
    rows = np.concatenate([ds.train_rows, ds.val_rows])
    assert np.array_equal(np.sort(rows), np.arange(8124))
    again = load_mushroom(seed=0)
    assert np.array_equal(again.train_rows, ds.train_rows)
    assert np.array_equal(again.X_train, ds.X_train)
    other = load_mushroom(seed=1)
    assert not np.array_equal(other.train_rows, ds.train_rows)
    # the documented rule: first n_train entries of default_rng(seed).permutation(8124)
    perm = np.random.default_rng(0).permutation(8124)
    assert np.array_equal(ds.train_rows, np.sort(perm[:6905]))
    small = load_mushroom(seed=3, n_train=100)
    assert small.X_train.shape == (100, 117) and small.X_val.shape == (8024, 117)


def test_corrupted_copy_is_refused(tmp_path):
    bad = tmp_path / "agaricus-lepiota.data"
    shutil.copy(_mushroom_path(), bad)
    raw = bytearray(bad.read_bytes())
    raw[2] = ord("b") if raw[2] != ord("b") else ord("x")   # change one cap-shape letter
    bad.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="sha256.*altered"):
        load_mushroom(path=str(bad))
    good = tmp_path / "copy.data"
    shutil.copy(_mushroom_path(), good)
    assert load_mushroom(path=str(good)).X_train.shape == (6905, 117)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_mushroom(path=str(tmp_path / "nope.data"))


@pytest.mark.parametrize("n_train,err", [(0, ValueError), (8125, ValueError),
                                         (100.0, TypeError), (True, TypeError)])
def test_bad_n_train(n_train, err):
    with pytest.raises(err, match="n_train"):
        load_mushroom(n_train=n_train)


@pytest.mark.parametrize("seed,err", [(-1, ValueError), (1.5, TypeError), ("0", TypeError)])
def test_bad_seed(seed, err):
    with pytest.raises(err, match="seed"):
        load_mushroom(seed=seed)


# ---------------------------------------------------------------------------------------------
# check_arrays / split_dataset


def test_check_arrays_accepts_and_copies():
    X0 = np.array([[1, 0], [0, 2]], dtype=np.int32)
    y0 = np.array([True, False])
    X, y = check_arrays(X0, y0)
    assert X.dtype == np.float64 and y.tolist() == [1.0, 0.0]
    X[0, 0] = 5
    assert X0[0, 0] == 1


@pytest.mark.parametrize("X,y,match", [
    (np.zeros(3), np.zeros(3), "2-D"),
    (np.zeros((0, 3)), np.zeros(0), "at least one sample"),
    (np.zeros((3, 0)), np.zeros(3), "at least one sample"),
    (np.zeros((3, 2)), np.zeros(2), "length 3"),
    (np.zeros((3, 2)), np.zeros((3, 1)), "1-D"),
    (np.array([[0.0, np.nan], [1, 1]]), np.zeros(2), "finite.*nan.*row 0, column 1"),
    (np.array([[0.0, 1], [np.inf, 1]]), np.zeros(2), "finite.*inf.*row 1"),
    (np.zeros((2, 2)), np.array([0, 2]), "0 or 1.*2.0 at index 1"),
    (np.zeros((2, 2)), np.array([-1, 1]), "0 or 1"),
    (np.zeros((2, 2)), np.array([0.5, 1]), "0 or 1"),
])
def test_check_arrays_errors(X, y, match):
    with pytest.raises(ValueError, match=match):
        check_arrays(X, y)


def test_check_arrays_type_error():
    with pytest.raises(TypeError, match="real numbers"):
        check_arrays(np.array([["a", "b"]]), np.zeros(1))


def test_split_dataset_rule_and_errors():
    X = np.arange(20.0).reshape(10, 2)
    y = np.array([0, 1] * 5)
    ds = split_dataset(X, y, seed=4)                     # default 85% -> 8 or 9 rows
    assert len(ds.y_train) == round(0.85 * 10) and len(ds.y_val) == 10 - len(ds.y_train)
    perm = np.random.default_rng(4).permutation(10)
    assert np.array_equal(ds.train_rows, np.sort(perm[:len(ds.y_train)]))
    assert np.array_equal(ds.X_train, X[ds.train_rows])
    with pytest.raises(ValueError, match="n_train must be in"):
        split_dataset(X, y, n_train=11)
    with pytest.raises(ValueError, match="feature_names"):
        split_dataset(X, y, feature_names=("a",))


# ---------------------------------------------------------------------------------------------
# svmlight


def test_svmlight_reads_and_maps_labels(tmp_path):
    p = tmp_path / "a.svm"
    p.write_text("# a comment line\n+1 1:0.5 3:1 # trailing\n-1 2:2\n\n+1 qid:3 3:-1.5\n")
    X, y = load_svmlight(str(p))
    assert X.tolist() == [[0.5, 0, 1], [0, 2, 0], [0, 0, -1.5]]
    assert y.tolist() == [1.0, 0.0, 1.0]
    X, y = load_svmlight(str(p), n_features=5)
    assert X.shape == (3, 5)
    p.write_text("1 1:1\n2 2:1\n2 1:3\n")
    assert load_svmlight(str(p))[1].tolist() == [0.0, 1.0, 1.0]     # smaller label -> 0
    p.write_text("0 0:1\n1 1:1\n")
    X, y = load_svmlight(str(p), zero_based=True)
    assert X.tolist() == [[1, 0], [0, 1]] and y.tolist() == [0.0, 1.0]


@pytest.mark.parametrize("text,kwargs,match", [
    ("1 1:1\n2 1:1\n3 1:1\n", {}, "binary.*3 distinct"),
    ("1 1:x\n", {}, ":1: malformed"),
    ("1 1:1\n0 3:1 2:1\n", {}, ":2: malformed.*increase"),
    ("1 0:1\n", {}, "below 1.*zero_based"),
    ("\n# only comments\n", {}, "no sample"),
    ("1 4:1\n0 1:1\n", {"n_features": 2}, "n_features=2"),
    ("3 1:1\n", {}, "single label"),
    ("nan 1:1\n", {}, "label must be finite"),
])
def test_svmlight_errors(tmp_path, text, kwargs, match):
    p = tmp_path / "b.svm"
    p.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_svmlight(str(p), **kwargs)


def test_svmlight_missing(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_svmlight(str(tmp_path / "none.svm"))
