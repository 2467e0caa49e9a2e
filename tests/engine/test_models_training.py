import numpy as np
import pytest
import torch

from trainer.engine import Classifier, train_supervised
from trainer.engine.augment import ImageAugmenter, TableAugmenter, augmenter_for
from trainer.engine.models import SmallCNN, architecture, build_network
from trainer.engine.training import train_model

from .datasets import blobs


def test_mlp_learns_blobs_and_checkpoint_roundtrip(fast_settings):
    X, y = blobs(20)
    clf = train_supervised(X, y, n_classes=3, settings=fast_settings, seed=0)
    proba = clf.predict_proba(X)
    assert proba.shape == (60, 3) and proba.dtype == np.float32 and np.allclose(proba.sum(1), 1, atol=1e-5)
    assert (proba.argmax(1) == y).mean() > 0.9
    again = Classifier.from_state(clf.state())
    assert np.allclose(again.predict_proba(X), proba, atol=1e-6)
    assert clf.embed(X).shape == (60, 32)
    with pytest.raises(ValueError, match="shape"):
        clf.predict_proba(np.zeros((2, 5), np.float32))


def test_cnn_shapes_for_digits_and_mnist():
    for size, channels in ((8, [8, 16]), (28, [8, 16, 32])):
        arch = architecture((1, size, size), 10, classifier="auto", hidden_sizes=[], cnn_channels=channels, dropout=0.1)
        net = build_network(arch)
        assert isinstance(net, SmallCNN)
        assert net(torch.zeros(2, 1, size, size)).shape == (2, 10)
    with pytest.raises(ValueError, match="cnn"):
        architecture((5,), 3, classifier="cnn", hidden_sizes=[8], cnn_channels=[8], dropout=0.0)


def test_cnn_learns_tiny_images(fast_settings, tiny_images):
    X, y = tiny_images
    clf = train_supervised(X, y, n_classes=3, settings=fast_settings, seed=0)
    assert clf.arch["kind"] == "cnn"
    assert (clf.predict_proba(X).argmax(1) == y).mean() > 0.9


def test_augmenters_keep_shape_and_change_input():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 8, 8)
    aug = augmenter_for((1, 8, 8), enabled=True, strength=1.0)
    assert isinstance(aug, ImageAugmenter)
    for view in (aug.weak(x, g), aug.strong(x, g)):
        assert view.shape == x.shape and not torch.allclose(view, x)
    t = torch.randn(4, 6)
    tab = augmenter_for((6,), enabled=True, strength=1.0)
    assert isinstance(tab, TableAugmenter) and tab.weak(t, g).shape == t.shape
    assert torch.equal(augmenter_for((6,), enabled=False, strength=1.0).weak(t, g), t)


def test_student_from_teacher_and_consistency(fast_settings):
    X, y = blobs(15)
    teacher = train_supervised(X, y, n_classes=3, settings=fast_settings, seed=0)
    s = fast_settings.model_copy(update={"student_init": "teacher", "consistency_weight": 1.0,
                                         "consistency_threshold": 0.5})
    student = train_model((X[:6], y[:6]), n_classes=3, settings=s, seed=1, init=teacher,
                          pseudo=(X[6:], y[6:], np.full(len(X) - 6, 0.5, np.float32)), unlabeled=X)
    assert student.arch == teacher.arch and student.module is not teacher.module
    assert (student.predict_proba(X).argmax(1) == y).mean() > 0.9
    with pytest.raises(ValueError, match="labels must be in"):
        train_model((X, y + 5), n_classes=3, settings=fast_settings, seed=0)
