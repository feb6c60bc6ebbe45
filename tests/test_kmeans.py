"""The one faiss k-means (activecrl.core.kmeans): what its options do."""

import numpy as np
import pytest

from activecrl.core.errors import ConfigError
from activecrl.core.kmeans import kmeans, nearest_centroids


def _blobs(n=300, d=4, seed=0):
    rng = np.random.default_rng(seed)
    centers = np.eye(d, dtype=np.float32) * 10
    return (centers[rng.integers(d, size=n)] + rng.normal(size=(n, d))).astype(np.float32)


@pytest.mark.parametrize("options", [{}, {"init": "k-means++", "init_sample": 50}, {"train_sample": 100}])
def test_kmeans_is_a_function_of_the_generator_state(options):
    x = _blobs()
    a = kmeans(x, 4, np.random.default_rng(3), **options)
    assert a.shape == (4, 4) and a.dtype == np.float32
    np.testing.assert_array_equal(a, kmeans(x, 4, np.random.default_rng(3), **options))
    assert not np.array_equal(a, kmeans(x, 4, np.random.default_rng(4), **options))


def test_kmeans_pp_seeds_find_separated_blobs():
    centroids = kmeans(_blobs(), 4, np.random.default_rng(0), init="k-means++", init_sample=50)
    nearest = nearest_centroids(np.eye(4, dtype=np.float32) * 10, centroids)[:, 0]
    assert sorted(nearest.tolist()) == [0, 1, 2, 3]  # one centroid per blob


def test_kmeans_int_seed_takes_no_sampling_and_bad_input_says_what_to_pass():
    x = _blobs()
    np.testing.assert_array_equal(kmeans(x, 4, 7), kmeans(x, 4, 7 + 2**31))  # faiss seeds are 31-bit
    with pytest.raises(ConfigError, match="numpy Generator"):
        kmeans(x, 4, 7, train_sample=10)
    with pytest.raises(ConfigError, match="init must be"):
        kmeans(x, 4, np.random.default_rng(0), init="forgy")
    with pytest.raises(ConfigError, match="1 <= clusters <= points"):
        kmeans(x[:3], 4, np.random.default_rng(0))
