import numpy as np
import pytest
from sklearn.metrics import silhouette_score

from eden_lib.analysis.embeddings import embed_2d, knn_accuracy, landmark_matching_error, pca_floor, silhouette


def _clusters(n_per: int = 40, n_classes: int = 4, d: int = 16, spread: float = 0.1, seed: int = 0):
    g = np.random.default_rng(seed)
    centres = g.normal(size=(n_classes, d)) * 3
    labels = np.repeat(np.arange(n_classes), n_per)
    return centres[labels] + spread * g.normal(size=(labels.size, d)), labels


@pytest.mark.parametrize("folds", [5, "loo"])
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_knn_accuracy_separated_clusters_is_one(folds, metric):
    x, y = _clusters()
    assert knn_accuracy(x, y, k=5, folds=folds, metric=metric) == 1.0


def test_knn_accuracy_on_noise_is_chance_and_string_labels_work():
    g = np.random.default_rng(1)
    x = g.normal(size=(800, 16))
    y = np.array(["rib_5", "rib_6", "left_clavicle", "right_clavicle"])[g.integers(0, 4, 800)]
    assert abs(knn_accuracy(x, y, k=5, folds=5) - 0.25) < 0.07


def test_knn_accuracy_never_uses_its_own_fold():
    # each point has an exact duplicate with the opposite label: with LOO the duplicate decides (k=1) -> 0;
    # if the point itself leaked into its neighbours, accuracy would be 1
    x, _ = _clusters(n_per=10, n_classes=3)
    xs = np.concatenate([x, x])
    ys = np.concatenate([np.zeros(30), np.ones(30)])
    assert knn_accuracy(xs, ys, k=1, folds="loo") == 0.0


def test_knn_accuracy_deterministic_and_checked():
    x, y = _clusters(spread=3.0)
    assert knn_accuracy(x, y, folds=5, seed=3) == knn_accuracy(x, y, folds=5, seed=3)
    with pytest.raises(ValueError, match="k=500"):
        knn_accuracy(x, y, k=500)
    with pytest.raises(ValueError, match="folds=1"):
        knn_accuracy(x, y, folds=1)
    with pytest.raises(ValueError, match=r"labels must be \(N,\)"):
        knn_accuracy(x, y[:-1])


def test_silhouette_cosine_matches_sklearn_and_orders_structure():
    x, y = _clusters()
    s = silhouette(x, y)
    assert s == pytest.approx(silhouette_score(x, y, metric="cosine"))
    noise = np.random.default_rng(2).normal(size=x.shape)
    assert s > 0.8 > 0.1 > silhouette(noise, y)
    with pytest.warns(UserWarning, match="undefined"):
        assert np.isnan(silhouette(x, np.zeros(len(x))))


def _landmarks(p: int = 6, n_landmarks: int = 5, d: int = 8, seed: int = 0):
    g = np.random.default_rng(seed)
    proto = g.normal(size=(n_landmarks, d))
    features = proto[None] + 0.05 * g.normal(size=(p, n_landmarks, d))
    coords = g.uniform(0, 64, size=(p, n_landmarks, 2))
    return features, coords


def test_landmark_matching_perfect_when_landmarks_are_distinct():
    features, coords = _landmarks()
    out = landmark_matching_error(features, coords, landmark_names=list("abcde"))
    assert list(out["landmark"]) == list("abcde")
    assert (out["accuracy"] == 1.0).all() and (out["pixel_error"] == 0.0).all() and (out["n_pairs"] == 30).all()


def test_landmark_matching_hand_worked_swap():
    features, coords = _landmarks(p=2, n_landmarks=3)
    features[1, [0, 1]] = features[1, [1, 0]]  # patient B's landmarks 0 and 1 look like each other's
    out = landmark_matching_error(features, coords, metric="euclidean")
    np.testing.assert_allclose(out["accuracy"], [0.0, 0.0, 1.0])
    # A->B: landmark 0 matched B's 1 (error |B1-B0|); B->A: 0 matched A's 1 (error |A1-A0|)
    d_a, d_b = (np.linalg.norm(coords[i, 1] - coords[i, 0]) for i in (0, 1))
    np.testing.assert_allclose(out["pixel_error"], [(d_a + d_b) / 2, (d_a + d_b) / 2, 0.0])


def test_landmark_matching_without_coords_and_bad_shapes():
    features, coords = _landmarks()
    assert landmark_matching_error(features)["pixel_error"].isna().all()
    with pytest.raises(ValueError, match=r"coords \(6, 4, 2\)"):
        landmark_matching_error(features, coords[:, :4])
    with pytest.raises(ValueError, match="at least 2 patients"):
        landmark_matching_error(features[:1])


def test_embed_2d_tsne_deterministic_and_checked():
    x, _ = _clusters(n_per=15)
    a = embed_2d(x, "tsne", seed=0)
    assert a.shape == (60, 2)
    np.testing.assert_array_equal(a, embed_2d(x, "tsne", seed=0))
    with pytest.raises(ValueError, match="'pca'"):
        embed_2d(x, "pca")


def test_embed_2d_umap_deterministic():
    x, _ = _clusters(n_per=15)
    a = embed_2d(x, "umap", seed=0)
    assert a.shape == (60, 2)
    np.testing.assert_array_equal(a, embed_2d(x, "umap", seed=0))


def test_pca_floor_shape_determinism_and_reconstruction():
    g = np.random.default_rng(3)
    images = g.normal(size=(50, 3)) @ g.normal(size=(3, 8 * 8))  # rank-3 "images"
    z = pca_floor(images.reshape(50, 8, 8), dim=3, seed=0)
    assert z.shape == (50, 3)
    np.testing.assert_array_equal(z, pca_floor(images, dim=3, seed=0))
    assert np.linalg.matrix_rank(np.column_stack([z, images - images.mean(0)]), tol=1e-8) == 3
    with pytest.raises(ValueError, match="dim=51"):
        pca_floor(images, dim=51)
