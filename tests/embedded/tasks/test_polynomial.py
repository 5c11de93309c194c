"""Polynomial arithmetic in F_p[X]/(X^k): the answer is the expression's value (checked by hand, and against an
independent evaluation over the integers reduced only at the end), one token per symbol."""

import numpy as np
import pytest

from trl_mtp.embedded.tasks.polynomial import SYMBOLS, PolynomialArithmetic


def _integer_value(tokens, k):
    """(value over Z[X], untruncated, rest of the tokens): an independent evaluation; reducing mod p and X^k only
    at the end gives the same ring element, since Z[X] -> F_p[X]/(X^k) is a ring homomorphism."""
    head, rest = tokens[0], tokens[1:]
    if head in ("+", "*"):
        a, rest = _integer_value(rest, k)
        b, rest = _integer_value(rest, k)
        return (np.polyadd(a[::-1], b[::-1])[::-1] if head == "+" else np.convolve(a, b)), rest
    return np.array([int(t) for t in tokens[:k]], dtype=object), tokens[k:]


def _reduced(value, prime, k):
    value = [int(c) % prime for c in value[:k]]
    return " ".join(map(str, value + [0] * (k - len(value))))


def test_values_by_hand():
    two = PolynomialArithmetic(coefficients=2)
    # ((1 + 2X) + 3) * (5 + 6X) = 20 + 34X + 12X^2 = 6 + 6X mod (7, X^2)
    assert two.solve("* + 1 2 3 0 5 6 =") == "6 6"
    # (1 + 2X) + (3 * (5 + 6X)) = 16 + 20X = 2 + 6X: the other tree over the same operands
    assert two.solve("+ 1 2 * 3 0 5 6 =") == "2 6"
    three = PolynomialArithmetic(coefficients=3)
    # (1 + X)(1 + X^2) = 1 + X + X^2 + X^3: X^3 is truncated
    assert three.solve("* 1 1 0 1 0 1 =") == "1 1 1"
    # (6 + 6X)(6 + 6X) = 36 + 72X + 36X^2 = 1 + 2X + 1X^2 mod 7
    assert three.solve("* 6 6 0 6 6 0 =") == "1 2 1"
    assert PolynomialArithmetic(prime=5, coefficients=1).solve("+ 3 4 =") == "2"


def test_generated_answers_match_an_independent_evaluation():
    for prime, k in ((7, 3), (5, 4), (2, 2)):
        task = PolynomialArithmetic(prime=prime, coefficients=k, min_ops=1, max_ops=5)
        for problem in task.problems("train", 100):
            tokens = problem.prompt.split()
            value, rest = _integer_value(tokens[:-1], k)
            assert rest == [] and tokens[-1] == "="
            assert problem.answer == _reduced(value, prime, k)


def test_operations_in_range_and_fixed_width():
    task = PolynomialArithmetic(min_ops=2, max_ops=4)
    counts = set()
    for problem in task.problems("eval", 200):
        tokens = problem.prompt.split()
        ops = sum(t in ("+", "*") for t in tokens)
        counts.add(ops)
        assert len(tokens) == ops + (ops + 1) * 3 + 1  # an operator, or an operand of 3 coefficients, then "="
        assert len(problem.answer.split()) == 3
    assert counts == {2, 3, 4}


def test_deterministic_and_split():
    a, b = PolynomialArithmetic(seed=3), PolynomialArithmetic(seed=3)
    assert a.problems("train", 20) == b.problems("train", 20)
    assert a.problems("train", 20) != PolynomialArithmetic(seed=4).problems("train", 20)
    train = {p.prompt for p in a.problems("train", 2000)}
    assert not train & {p.prompt for p in a.problems("eval", 200)}


def test_encoding_by_hand_and_reward():
    task = PolynomialArithmetic(prime=7)
    plus, times, eq, eos = 7, 8, 9, 10  # the symbols follow the 7 coefficients
    assert task.encode("* + 1 2 3 0 5 6 =") == [times, plus, 1, 2, 3, 0, 5, 6, eq]
    assert task.encode("<eos>") == [eos] and task.token_vocab_size() == 7 + len(SYMBOLS)
    prompt = "* 1 1 0 1 0 1 ="
    assert task.reward([prompt, prompt, prompt], ["1 1 1", "1 1 1 1", "1 1 0"]) == [1.0, 0.0, 0.0]


def test_bad_input():
    with pytest.raises(ValueError, match="prime=8"):
        PolynomialArithmetic(prime=8)
    with pytest.raises(ValueError, match="min_ops=3"):
        PolynomialArithmetic(min_ops=3, max_ops=2)
    task = PolynomialArithmetic()
    with pytest.raises(ValueError, match="unknown polynomial token '9'"):
        task.encode("+ 9 =")
    with pytest.raises(ValueError, match="bad coefficients"):
        task.solve("+ 1 2 3 4 5 =")
    with pytest.raises(ValueError, match="trailing tokens"):
        task.solve("1 2 3 4 =")
    with pytest.raises(ValueError, match="final '='"):
        task.solve("1 2 3")
