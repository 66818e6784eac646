"""Border pixels are exact, colour frequencies follow rho, and injection is deterministic."""

import numpy as np
import pytest

from nht.domains.images import shortcuts as S


def _raw(n_train=4000, n_test=500, k=10, hw=12, seed=0):
    rng = np.random.default_rng(seed)
    return {"x_train": rng.integers(0, 256, (n_train, 3, hw, hw), dtype=np.uint8),
            "y_train": rng.integers(0, k, n_train), "x_test": rng.integers(0, 256, (n_test, 3, hw, hw), dtype=np.uint8),
            "y_test": rng.integers(0, k, n_test), "classes": np.array([str(i) for i in range(k)])}


@pytest.mark.parametrize("border", [1, 2, 3])
def test_border_pixels_exact(border):
    raw = _raw(n_train=50, n_test=20)
    d = S.inject(raw, 0.7, border, seed=3)
    pal = S.palette(10)
    mask = S.border_mask(12, 12, border)
    assert mask.sum() == 144 - (12 - 2 * border) ** 2
    for i in range(50):
        img = d["x_train"][i]
        expect = pal[d["c_train"][i]]
        assert (img[:, mask] == expect[:, None]).all()                   # every border pixel = colour
        np.testing.assert_array_equal(img[:, ~mask], raw["x_train"][i][:, ~mask])   # interior untouched
    np.testing.assert_array_equal(d["x_clean"], raw["x_test"])
    for i in range(20):
        assert (d["x_aligned"][i][:, mask] == pal[d["y_test"][i]][:, None]).all()
        assert (d["x_conflicting"][i][:, mask] == pal[d["c_conflicting"][i]][:, None]).all()
        assert (d["x_shortcut_only"][i][:, ~mask] == S.GREY).all()
        assert (d["x_shortcut_only"][i][:, mask] == pal[d["y_test"][i]][:, None]).all()
    assert (d["c_conflicting"] != d["y_test"]).all()


def test_border_zero_is_identity():
    raw = _raw(n_train=10, n_test=5)
    d = S.inject(raw, 1.0, 0, seed=0)
    np.testing.assert_array_equal(d["x_train"], raw["x_train"])
    np.testing.assert_array_equal(d["x_aligned"], raw["x_test"])


@pytest.mark.parametrize("rho", [0.1, 0.5, 0.95, 1.0])
def test_colour_frequencies_binomial(rho):
    n = 4000
    raw = _raw(n_train=n)
    d = S.inject(raw, rho, 2, seed=11)
    match = (d["c_train"] == d["y_train"]).mean()
    sd = np.sqrt(rho * (1 - rho) / n)
    assert abs(match - rho) <= 4 * sd + 1e-12            # within 4 binomial sd
    other = d["c_train"][d["c_train"] != d["y_train"]]
    if len(other) > 500:                                   # mismatches are spread over the other classes
        shift = (d["c_train"] - d["y_train"]) % 10
        counts = np.bincount(shift[shift > 0], minlength=10)[1:]
        p = 1 / 9
        assert np.all(np.abs(counts / counts.sum() - p) <= 4 * np.sqrt(p * (1 - p) / counts.sum()))


def test_no_information_baseline_is_uniform():
    raw = _raw(n_train=6000)
    d = S.inject(raw, 0.1, 2, seed=0)        # rho = 1/K: colour independent of label
    table = np.zeros((10, 10))
    np.add.at(table, (d["y_train"], d["c_train"]), 1)
    cond = table / table.sum(1, keepdims=True)
    assert np.abs(cond - 0.1).max() < 0.06


def test_deterministic_per_rho_border_seed():
    raw = _raw(n_train=300, n_test=50)
    a, b = S.inject(raw, 0.9, 2, 5), S.inject(raw, 0.9, 2, 5)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["c_train"], S.inject(raw, 0.9, 2, 6)["c_train"])
    assert not np.array_equal(a["c_train"], S.inject(raw, 0.8, 2, 5)["c_train"])


def test_subset_fixed_across_cells():
    raw = _raw(n_train=300, n_test=50)
    a = S.inject(raw, 0.5, 2, 0, n_train=100, n_test=20)
    b = S.inject(raw, 1.0, 2, 7, n_train=100, n_test=20)
    assert a["x_train"].shape[0] == 100 and a["x_clean"].shape[0] == 20
    np.testing.assert_array_equal(a["y_train"], b["y_train"])
    np.testing.assert_array_equal(a["x_clean"], b["x_clean"])


def test_palette_distinct_and_extends():
    assert len({tuple(c) for c in S.palette(10)}) == 10
    assert S.palette(13).shape == (13, 3)
    np.testing.assert_array_equal(S.palette(2), S.PALETTE[:2])
