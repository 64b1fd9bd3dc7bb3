import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from eden_lib.evaluation.linear_probe import fit_predict_linear_probe
from eden_lib.evaluation.metrics import auc_per_label


def _data(n: int = 300, d: int = 12, k: int = 3, seed: int = 0):
    g = np.random.default_rng(seed)
    x = g.normal(size=(n + 100, d)) * g.uniform(0.1, 10, size=d) + g.normal(size=d)
    w = g.normal(size=(d, k))
    y = (x / x.std(axis=0) @ w / np.sqrt(d) + 0.3 * g.normal(size=(n + 100, k)) > 0.3).astype(float)
    return x[:n], y[:n], x[n:], y[n:]


@pytest.mark.parametrize("C", [0.05, 1.0])
def test_matches_sklearn_logistic_regression_per_label(C):
    train_x, train_y, test_x, _ = _data()
    train_y[np.random.default_rng(1).random(train_y.shape) < 0.2] = np.nan  # unknown labels are left out
    scores = fit_predict_linear_probe(train_x, train_y, test_x, C=C, tol=1e-9)
    mean, std = train_x.mean(axis=0), train_x.std(axis=0)
    for k in range(train_y.shape[1]):
        known = ~np.isnan(train_y[:, k])
        ref = LogisticRegression(C=C, max_iter=5000, tol=1e-10).fit((train_x[known] - mean) / std, train_y[known, k])
        np.testing.assert_allclose(scores[:, k], ref.predict_proba((test_x - mean) / std)[:, 1], atol=1e-5)


def test_learns_a_linear_signal():
    train_x, train_y, test_x, test_y = _data(n=600)
    auc = auc_per_label(test_y, fit_predict_linear_probe(train_x, train_y, test_x))
    assert (auc > 0.85).all()


def test_one_class_label_gives_nan_column_and_a_note():
    train_x, train_y, test_x, _ = _data()
    train_y[:, 1] = 0.0
    train_y[:5, 1] = np.nan
    with pytest.warns(UserWarning, match=r"cardiomegaly \(0 pos, 295 neg\)"):
        scores = fit_predict_linear_probe(train_x, train_y, test_x, label_names=["a", "cardiomegaly", "c"])
    assert np.isnan(scores[:, 1]).all() and np.isfinite(scores[:, [0, 2]]).all()


def test_invariant_to_feature_scale_thanks_to_standardisation():
    train_x, train_y, test_x, _ = _data()
    scale = np.random.default_rng(2).uniform(0.01, 100, size=train_x.shape[1])
    a = fit_predict_linear_probe(train_x, train_y, test_x, tol=1e-9)
    b = fit_predict_linear_probe(train_x * scale + 5, train_y, test_x * scale + 5, tol=1e-9)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_deterministic():
    train_x, train_y, test_x, _ = _data()
    np.testing.assert_array_equal(
        fit_predict_linear_probe(train_x, train_y, test_x, seed=0),
        fit_predict_linear_probe(train_x, train_y, test_x, seed=0),
    )


def test_bad_inputs_raise():
    train_x, train_y, test_x, _ = _data()
    with pytest.raises(ValueError, match=r"train_y \(299, 3\)"):
        fit_predict_linear_probe(train_x, train_y[:-1], test_x)
    with pytest.raises(ValueError, match=r"test_x \(100, 11\)"):
        fit_predict_linear_probe(train_x, train_y, test_x[:, :-1])
    bad = train_y.copy()
    bad[0, 0] = -1
    with pytest.raises(ValueError, match=r"\[-1.0\]"):
        fit_predict_linear_probe(train_x, bad, test_x)
    with pytest.raises(ValueError, match="C=0"):
        fit_predict_linear_probe(train_x, train_y, test_x, C=0)
