"""Adaptive drafting: how many drafts (0..D) each speculative round verifies, chosen to maximise tokens per second.

With k drafts a live row gains, per round, E(k) = 1 + sum_{j=1..k} prod_{i<=j} a_i tokens in expectation, where a_i
is the probability that draft i is kept once drafts 1..i-1 were (estimated from the rounds so far, recent rounds
weighing more). The round itself takes T(b, k) seconds at b live rows: measured, as the wall time of past rounds with
k drafts at a batch size in the same power-of-two bucket (the round's one host read ends it, so on an accelerator
the time includes the device's work; a bucket the batch has just entered borrows the nearest bucket's times, scaled).
The planner picks

    k* = argmax_k  E(k) / T(b, k),        k = 0 being plain decoding (E = 1, one token per forward),

drafting only when k* is predicted at least `min_gain` (5%) faster than plain decoding: a drafting round's measured
time misses costs that land in other rounds (the rejected drafts' holes lengthen every later round's attention; a
batch runs until its slowest row ends), and single round times on a loaded machine scatter by more than a near-tie's
difference, so a near-tie goes to plain decoding, the choice whose cost is known. So speculation stops where it does
not pay: at large batches, where verifying k + 1 tokens per row costs about k + 1
forwards, or when the heads drift away from the policy. A choice never measured is tried once before the planner
exploits (the largest first: it also measures every depth's acceptance); every `refresh_every` rounds, of plain
decoding and the best choice's neighbours (k - 1, k + 1), the one measured longest ago in the current bucket is tried
again, so the estimates follow the machine's load and the policy's drift (a depth's acceptance is only seen when it
drafts), and one unlucky measurement cannot lock plain decoding out, at the cost of one round in `refresh_every`
off the best (plain decoding is the cheapest round, a neighbour one draft away).

Every choice is lossless: a round with any number of drafts commits exactly what the base alone would (greedy: the
same tokens; sampling: the same distribution, the choice depending on past rounds only), so the output does not
depend on the planner. State is plain Python numbers, updated once per round from the round's one host read.
Stages of a round with the planner: choose (here) -> propose -> verify -> accept -> update -> observe (here).
"""

from __future__ import annotations

from dataclasses import dataclass, field


def batch_bucket(batch_size: int) -> int:
    """The power of two at or above `batch_size`: rounds at batch sizes in one bucket share their time estimates."""
    return 1 << max(batch_size - 1, 0).bit_length()


@dataclass
class DraftPlanner:
    """Chooses each round's number of drafts from running acceptance and cost estimates (`choose`), and learns from
    the round (`observe`). One planner may serve many calls (a trainer's rollouts): its estimates carry over.

    `max_drafts`: D, the heads that may draft. `acceptance_memory`: per round, the weight the past keeps in the
    acceptance counts (0.98: about the last 50 rounds). `time_memory`: the same for the round times.
    `prior_acceptance`, `prior_weight`: the acceptance a depth starts from, worth that many observed rows.
    `min_gain`: drafting must be predicted this much faster than plain decoding (0.05: 5%) to be chosen."""

    max_drafts: int
    acceptance_memory: float = 0.98
    time_memory: float = 0.8
    refresh_every: int = 32
    prior_acceptance: float = 0.5
    prior_weight: float = 1.0
    min_gain: float = 0.05
    kept: list[float] = field(default_factory=list)  # per depth: rows that kept draft i, drafts 1..i-1 kept
    verified: list[float] = field(default_factory=list)  # per depth: rows whose draft i was verified, 1..i-1 kept
    round_seconds: dict = field(default_factory=dict)  # (bucket, k) -> running round time
    measured_at: dict = field(default_factory=dict)  # (bucket, k) -> the round it was last measured
    rounds: int = 0

    def __post_init__(self):
        if isinstance(self.max_drafts, bool) or not isinstance(self.max_drafts, int) or self.max_drafts < 0:
            raise ValueError(f"max_drafts must be an integer >= 0, got {self.max_drafts!r}")
        for name in ("acceptance_memory", "time_memory"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        if not self.min_gain >= 0.0:
            raise ValueError(f"min_gain must be >= 0, got {self.min_gain!r}")
        if self.refresh_every < 1:
            raise ValueError(f"refresh_every must be >= 1, got {self.refresh_every!r}")
        self.kept = self.kept or [0.0] * self.max_drafts
        self.verified = self.verified or [0.0] * self.max_drafts

    # -- estimates ------------------------------------------------------------------------------------------------
    def acceptance(self) -> list[float]:
        """a_i per depth: kept / verified, shrunk towards the prior."""
        w, a0 = self.prior_weight, self.prior_acceptance
        return [(k + w * a0) / (v + w) for k, v in zip(self.kept, self.verified)]

    def expected_tokens(self, k: int) -> float:
        """E(k): tokens a row gains in a round with k drafts, 1 + sum_{j<=k} prod_{i<=j} a_i."""
        total, run = 1.0, 1.0
        for a in self.acceptance()[:k]:
            run *= a
            total += run
        return total

    def seconds(self, batch_size: int, k: int) -> float | None:
        """T(b, k): the running time of a round with k drafts in b's bucket. Not measured there yet (rows left the
        batch): the nearest bucket's time for k, scaled by the two buckets' ratio for a choice measured in both.
        None: k never measured at all."""
        bucket = batch_bucket(batch_size)
        if (bucket, k) in self.round_seconds:
            return self.round_seconds[(bucket, k)]
        others = [b for b, j in self.round_seconds if j == k]
        if not others:
            return None
        near = min(others, key=lambda b: abs(b.bit_length() - bucket.bit_length()))
        shared = [j for b, j in self.measured_at if b == bucket and (near, j) in self.round_seconds]
        scale = 1.0
        if shared:
            j = max(shared, key=lambda j: self.measured_at[(bucket, j)])
            scale = self.round_seconds[(bucket, j)] / self.round_seconds[(near, j)]
        return self.round_seconds[(near, k)] * scale

    # -- the two stages ---------------------------------------------------------------------------------------------
    def choose(self, batch_size: int, limit: int | None = None) -> int:
        """Drafts for the next round at `batch_size` live rows, at most `limit` (room left before the model's last
        position; default D)."""
        limit = self.max_drafts if limit is None else min(limit, self.max_drafts)
        bucket = batch_bucket(batch_size)
        choices = range(limit + 1)
        estimates = {k: self.seconds(batch_size, k) for k in choices}
        unmeasured = [k for k, t in estimates.items() if t is None]
        if unmeasured:
            return unmeasured[-1]
        rate = {k: self.expected_tokens(k) / estimates[k] for k in choices}  # tokens per second per row
        best = max(choices, key=rate.get)
        if rate[best] < (1.0 + self.min_gain) * rate[0]:  # a near-tie: plain decoding
            best = 0
        if self.rounds % self.refresh_every == self.refresh_every - 1:  # re-measure plain or a neighbour of the best
            candidates = [k for k in {0, best - 1, best + 1} if k in choices and k != best]
            return min(candidates, key=lambda k: self.measured_at.get((bucket, k), -1), default=best)
        return best

    def observe(self, batch_size: int, k: int, seconds: float, accepted: list[int]) -> None:
        """A round with k drafts at `batch_size` live rows took `seconds`; row r kept accepted[r] of its drafts."""
        key = (batch_bucket(batch_size), k)
        old = self.round_seconds.get(key)
        self.round_seconds[key] = seconds if old is None else self.time_memory * old + (1 - self.time_memory) * seconds
        self.measured_at[key] = self.rounds
        self.rounds += 1
        if k == 0:
            return
        m = self.acceptance_memory
        for i in range(self.max_drafts):
            self.kept[i] *= m
            self.verified[i] *= m
        for kept in accepted:
            for i in range(min(kept + 1, k)):  # draft i + 1 was verified: drafts 1..i kept
                self.verified[i] += 1
                self.kept[i] += kept > i
