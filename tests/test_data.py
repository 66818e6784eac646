import numpy as np
import pytest

from nht.domains.modular.data import OPS, make_modular_dataset, modular_table

PYTHON_OPS = {
    "add": lambda a, b, p: (a + b) % p,
    "sub": lambda a, b, p: (a - b) % p,
    "mul": lambda a, b, p: (a * b) % p,
    "div": lambda a, b, p: next(c for c in range(p) if (c * b) % p == a % p),
    "a2_plus_b2": lambda a, b, p: (a ** 2 + b ** 2) % p,
    "a2_ab_b2": lambda a, b, p: (a ** 2 + a * b + b ** 2) % p,
    "a3_ab": lambda a, b, p: (a ** 3 + a * b) % p,
}


@pytest.mark.parametrize("op", sorted(OPS))
def test_every_op_matches_plain_python(op):
    p = 13
    a, b, y = modular_table(op, p)
    expected_pairs = p * (p - 1) if op == "div" else p * p
    assert len(y) == expected_pairs
    for ai, bi, yi in zip(a, b, y):
        assert yi == PYTHON_OPS[op](int(ai), int(bi), p), (op, ai, bi)
    if op == "div":
        assert (b != 0).all()


def test_unknown_op_is_rejected():
    with pytest.raises(ValueError, match="unknown op"):
        modular_table("pow", 7)


def test_split_is_disjoint_complete_and_deterministic():
    d1 = make_modular_dataset("add", 17, 0.4, split_seed=3)
    d2 = make_modular_dataset("add", 17, 0.4, split_seed=3)
    d3 = make_modular_dataset("add", 17, 0.4, split_seed=4)
    train = {tuple(x) for x in d1["x_train"]}
    test = {tuple(x) for x in d1["x_test"]}
    assert not train & test
    assert len(train | test) == 17 * 17
    assert len(train) == round(0.4 * 17 * 17)
    np.testing.assert_array_equal(d1["x_train"], d2["x_train"])
    assert not np.array_equal(d1["x_train"], d3["x_train"])
