"""Polynomial arithmetic in the ring F_p[X]/(X^k): the algorithmic-reasoning task of Gloeckle et al. 2024 at toy
scale, where 2-token prediction helped small models.

A problem is an expression of `ops` binary operations (`+`, `*`) on random polynomials, written in prefix
(Polish) notation, one token per symbol; a polynomial is its k coefficients in F_p, lowest degree first, so
every operand has the same width and needs no brackets. The answer is the k coefficients of the result:

    prime 7, k 2:  "* + 1 2 3 0 5 6 ="  is  ((1 + 2X) + (3 + 0X)) * (5 + 6X) = (4 + 2X)(5 + 6X)
                   = 20 + 34X + 12X^2 = 6 + 6X  (mod 7, mod X^2)   ->  "6 6"

Multiplication truncates at X^k (the ring's quotient), so the answer always has k coefficients. The number of
operations is drawn from `min_ops..max_ops`, so an evaluation set with more operations than training saw is an
out-of-domain test. `encode` gives the one-token-per-symbol ids (coefficients 0..p-1, then `SYMBOLS`) for models
trained from scratch on this task alone. Its own vocabulary keeps it out of the task registry and the
pretraining mixture, like the named stories.
"""

from __future__ import annotations

from trl_mtp.embedded.tasks.base import Problem, PromptTask

OPERATORS = ("+", "*")
SYMBOLS = (*OPERATORS, "=", "<eos>")  # token ids prime + 0 .. prime + 3


def poly_add(a: list[int], b: list[int], prime: int) -> list[int]:
    return [(x + y) % prime for x, y in zip(a, b)]


def poly_mul(a: list[int], b: list[int], prime: int) -> list[int]:
    """The product truncated at X^k: coefficient i is sum_{j <= i} a_j b_{i-j} (mod prime)."""
    return [sum(a[j] * b[i - j] for j in range(i + 1)) % prime for i in range(len(a))]


class PolynomialArithmetic(PromptTask):
    name = "polynomial_arithmetic"
    description = "evaluate a prefix expression of sums and products of polynomials in F_p[X]/(X^k)"
    params = {"prime": 7, "coefficients": 3, "min_ops": 1, "max_ops": 3}
    min_values = {"prime": 2, "coefficients": 1, "min_ops": 1, "max_ops": 1}

    def validate(self) -> None:
        if self.prime > 10 or any(self.prime % d == 0 for d in range(2, self.prime)):
            raise ValueError(f"task 'polynomial_arithmetic': prime={self.prime} must be a prime below 10")
        if self.min_ops > self.max_ops:
            raise ValueError(
                f"task 'polynomial_arithmetic': min_ops={self.min_ops} is more than max_ops={self.max_ops}"
            )

    def generate(self, rng) -> Problem:
        ops = rng.randint(self.min_ops, self.max_ops)
        prompt = " ".join(self._expression(rng, ops) + ["="])
        return Problem(prompt, self.solve(prompt), prompt)

    def _expression(self, rng, ops: int) -> list[str]:
        """A random expression tree with `ops` operations, in prefix notation."""
        if ops == 0:
            return [str(rng.randrange(self.prime)) for _ in range(self.coefficients)]
        left = rng.randrange(ops)  # operations in the left subtree: every tree shape is possible
        return [rng.choice(OPERATORS)] + self._expression(rng, left) + self._expression(rng, ops - 1 - left)

    def solve(self, prompt: str) -> str:
        tokens = prompt.split()
        if not tokens or tokens[-1] != "=":
            raise ValueError(f"not a polynomial prompt (no final '='): {prompt!r}")
        value, end = self._evaluate(tokens, 0)
        if end != len(tokens) - 1:
            raise ValueError(f"not a polynomial prompt (trailing tokens): {prompt!r}")
        return " ".join(map(str, value))

    def _evaluate(self, tokens: list[str], pos: int) -> tuple[list[int], int]:
        """(value of the expression starting at `pos`, the position after it)."""
        if pos >= len(tokens):
            raise ValueError("not a polynomial prompt (expression ends early)")
        if tokens[pos] in OPERATORS:
            a, pos_b = self._evaluate(tokens, pos + 1)
            b, end = self._evaluate(tokens, pos_b)
            return (poly_add if tokens[pos] == "+" else poly_mul)(a, b, self.prime), end
        coefficients = tokens[pos : pos + self.coefficients]
        if len(coefficients) < self.coefficients or not all(c.isdigit() and int(c) < self.prime for c in coefficients):
            raise ValueError(f"not a polynomial prompt (bad coefficients {coefficients})")
        return [int(c) for c in coefficients], pos + self.coefficients

    # -- one token per symbol ------------------------------------------------------------------------------
    def token_vocab_size(self) -> int:
        """Vocabulary of the one-token-per-symbol encoding: the coefficients 0..prime-1, then `SYMBOLS`."""
        return self.prime + len(SYMBOLS)

    def encode(self, text: str) -> list[int]:
        """A prompt or an answer as token ids: a coefficient c is id c, a symbol follows the coefficients."""
        ids = []
        for token in text.split():
            if token in SYMBOLS:
                ids.append(self.prime + SYMBOLS.index(token))
            elif token.isdigit() and int(token) < self.prime:
                ids.append(int(token))
            else:
                raise ValueError(f"unknown polynomial token {token!r} in {text!r}")
        return ids
