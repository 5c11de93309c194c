"""Replay benchmark: the decoding engine at a realistic forward cost, without training a large model.

At 1.1M parameters a forward is mostly Python, so `bench decode` on its trained models measures overhead more than
the algorithm, and training a model whose forward dominates takes hours here. So, in two steps:

- record: the decode benchmark's trained models (a small base, trained heads of each family) decode the held-out
  prompts at batch 1, and each verify round's accepted length is kept, per family and prompt: a trace (JSON, with the
  draft count D, the prompts and the heads' configs);
- replay: a larger random-weight model (`--replay-preset`) with the same head families first decodes every prompt
  plainly (greedy: the reference continuation); then the real engine (`speculative_generate`: verify, accept, cache
  update) decodes again with an oracle drafter, which proposes the next `a` reference tokens (a = the recorded
  accepted length of that row's round), then wrong tokens, so the verifier keeps exactly `a` drafts. The family's own
  heads still run on the large model every round (their cost is in the time), their drafts are replaced by the
  oracle's. Every replayed call is checked: each round kept its recorded length (`check_replay`) and the output
  equals plain greedy decoding (`bench decode`'s `identical_to_greedy`, required by `main`): the lossless check,
  which also shows the oracle was aligned with the reference.

Greedy only, EOS off in both steps (a replayed row must run exactly its recorded rounds).

    trl-mtp bench decode --record-trace TRACE [--pretrain-task mix ...]  # the trained models, batch 1
    trl-mtp bench decode --replay TRACE [--replay-preset small-llama]   # timings as `bench decode` reports them
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
from pathlib import Path

import torch

import trl_mtp.decoding as decoding
from trl_mtp.config import MTPConfig
from trl_mtp.decoding import Drafter, speculative_generate
from trl_mtp.embedded.presets import build_model
from trl_mtp.model import MTPForCausalLM

TRACE_FORMAT = "trl-mtp decode trace"


# ----------------------------------------------------------------------------------------------------------------------
# the trace
# ----------------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Trace:
    """What a recording kept: per family, per prompt, the number of drafts each verify round accepted (uncut by
    max_new_tokens), with the draft count D of every round, the prompts (token ids) and the recorded heads' configs."""

    num_draft_tokens: int
    max_new_tokens: int
    vocab_size: int
    pad_token_id: int
    prompts: list[list[int]]
    rounds: dict[str, list[list[int]]]  # family -> per prompt: accepted drafts per round
    head_configs: dict[str, dict]  # family -> `MTPConfig.to_dict()` of the recorded heads
    source: dict = dataclasses.field(default_factory=dict)  # where it was recorded (free-form)

    def save(self, path) -> None:
        text = json.dumps({"format": TRACE_FORMAT, **dataclasses.asdict(self)}, indent=1)
        # a list of numbers (a prompt, a prompt's rounds) on one line, not a line per number
        Path(path).write_text(re.sub(r"\[[\d,\s-]*\]", lambda m: json.dumps(json.loads(m.group())), text))

    @classmethod
    def load(cls, path) -> Trace:
        """Read and check a trace file (a ValueError names what is wrong)."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"replay trace {str(path)!r}: no such file (write one with --record-trace)")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"replay trace {str(path)!r}: not JSON ({e})") from None
        if not isinstance(data, dict) or data.pop("format", None) != TRACE_FORMAT:
            raise ValueError(f"replay trace {str(path)!r}: not a trace (no 'format': {TRACE_FORMAT!r})")
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(n for n in names - set(data) if n != "source")
        if missing or set(data) - names:
            raise ValueError(
                f"replay trace {str(path)!r}: missing fields {missing}, unknown {sorted(set(data) - names)}"
            )
        for name, value in data.items():
            kind = FIELD_TYPES[name]
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ValueError(f"replay trace {str(path)!r}: {name} = {str(value)[:40]}, not of type {kind.__name__}")
        trace = cls(**data)
        trace.check(str(path))
        return trace

    def check(self, name: str = "replay trace") -> None:
        """Every family has a list of rounds for every prompt, each accepted length in 0..D."""
        D = self.num_draft_tokens
        if not self.prompts or not self.rounds:
            raise ValueError(f"{name}: empty ({len(self.prompts)} prompts, {len(self.rounds)} families)")
        for family, per_prompt in self.rounds.items():
            if family not in self.head_configs:
                raise ValueError(f"{name}: family {family!r} has rounds but no head config")
            heads = self.head_configs[family].get("num_mtp_heads")
            if heads != D:
                raise ValueError(f"{name}: family {family!r} has {heads} heads, the trace drafts D = {D} per round")
            if len(per_prompt) != len(self.prompts):
                raise ValueError(
                    f"{name}: family {family!r} has rounds for {len(per_prompt)} of {len(self.prompts)} prompts"
                )
            for i, rounds in enumerate(per_prompt):
                if not rounds:
                    raise ValueError(f"{name}: family {family!r}, prompt {i} has no rounds")
                bad = [a for a in rounds if not (isinstance(a, int) and 0 <= a <= D)]
                if bad:
                    raise ValueError(
                        f"{name}: family {family!r}, prompt {i}: accepted length {bad[0]!r} outside 0..D = {D}"
                    )

    def rounds_for(self, family: str, prompt: int, max_new_tokens: int) -> list[int]:
        """The rounds a decode of `max_new_tokens` tokens runs: the prefill commits 1 token, a round a + 1."""
        committed = 1
        for j, a in enumerate(self.rounds[family][prompt]):
            if committed >= max_new_tokens:
                return self.rounds[family][prompt][:j]
            committed += a + 1
        if committed < max_new_tokens:
            raise ValueError(
                f"replay: the trace of family {family!r}, prompt {prompt} covers {committed} new tokens, "
                f"max_new_tokens = {max_new_tokens} asks for more"
            )
        return self.rounds[family][prompt]


FIELD_TYPES = {name: int for name in ("num_draft_tokens", "max_new_tokens", "vocab_size", "pad_token_id")}
FIELD_TYPES.update(prompts=list, rounds=dict, head_configs=dict, source=dict)


@contextlib.contextmanager
def eos_off(model):
    """Inside, the model's generation config has no EOS token: a decode runs to max_new_tokens, so a replayed row
    runs exactly its recorded rounds."""
    config = model.base_model.generation_config
    saved, config.eos_token_id = config.eos_token_id, None
    try:
        yield
    finally:
        config.eos_token_id = saved


def record_trace(models: dict, prompts: list[list[int]], max_new_tokens: int, pad: int, source=None) -> Trace:
    """Decode every prompt at batch 1 with each model (`{family or method name: MTPForCausalLM}`, heads of one D,
    greedy, EOS off) and keep each round's accepted length."""
    rounds, configs, depths = {}, {}, set()
    for model in models.values():
        family = model.heads.head_type
        depths.add(model.heads.num_depths)
        rounds[family], configs[family] = [], model.mtp_config.to_dict()
        with eos_off(model):
            for prompt in prompts:
                ids = torch.tensor([prompt])
                _, stats = speculative_generate(model, ids, max_new_tokens=max_new_tokens, pad_token_id=pad)
                rounds[family].append([accepted[0] for accepted in stats["accepted_per_round"]])
    if len(depths) != 1:
        raise ValueError(f"record_trace needs heads of one draft count, got {sorted(depths)}")
    vocab = next(iter(models.values())).base_model.config.get_text_config(decoder=True).vocab_size
    return Trace(
        num_draft_tokens=depths.pop(),
        max_new_tokens=max_new_tokens,
        vocab_size=vocab,
        pad_token_id=pad,
        prompts=[list(p) for p in prompts],
        rounds=rounds,
        head_configs=configs,
        source=source or {},
    )


# ----------------------------------------------------------------------------------------------------------------------
# the oracle
# ----------------------------------------------------------------------------------------------------------------------
def oracle_drafts(
    reference: torch.Tensor, generated: torch.Tensor, accepted: torch.Tensor, num_drafts: int, vocab_size: int
) -> torch.Tensor:
    """[b, num_drafts] drafts that the verifier keeps exactly `accepted` [b] of. reference [b, L]: each row's plain
    greedy continuation (new tokens); generated [b]: new tokens a row committed, its last one the verify's input. Draft
    j (1-based) is reference token generated + j - 1, what plain decoding commits next, for j <= accepted; the later
    ones are wrong (the reference token + 1 mod V), so the first of them is rejected."""
    cols = generated[:, None] + torch.arange(num_drafts, device=reference.device)[None]
    right = reference.gather(1, cols)
    keep = torch.arange(num_drafts, device=reference.device)[None] < accepted[:, None]
    return torch.where(keep, right, (right + 1) % vocab_size)


class OracleDrafter(Drafter):
    """The engine's drafter for a replay: the family's own drafter runs every stage (its heads' cost, its state kept
    as in a real decode), and the drafts it proposes are replaced by `oracle_drafts` for the row's recorded round."""

    def __init__(self, heads_drafter: Drafter, reference: torch.Tensor, rounds: list[list[int]], vocab_size: int):
        # no Drafter.__init__: the heads, trunk and projection are the family's drafter's
        self.heads_drafter = heads_drafter
        self.num_depths = heads_drafter.num_depths
        self.reference, self.rounds, self.vocab_size = reference, rounds, vocab_size  # per row of the caller's batch
        self.round = 0

    def observe(self, state, hidden, layer_kwargs, update):
        self.heads_drafter.observe(state, hidden, layer_kwargs, update)

    def plan_figure(self, mask, n_valid, done):
        return self.heads_drafter.plan_figure(mask, n_valid, done)

    def settle_figure(self, state, values):
        self.heads_drafter.settle_figure(state, values)

    def select_rows(self, index):
        self.heads_drafter.select_rows(index)

    def propose(self, state, sampler, num_drafts):
        self.heads_drafter.propose(state, sampler, num_drafts)  # the heads' work; their drafts are not used
        short = [row for row in state.rows if self.round >= len(self.rounds[row])]
        if short:  # an earlier round kept fewer drafts than recorded
            raise ValueError(
                f"replay: row {short[0]} of the batch needs round {self.round + 1}, its trace has "
                f"{len(self.rounds[short[0]])} (the verifier kept fewer drafts than recorded)"
            )
        accepted = torch.tensor([self.rounds[row][self.round] for row in state.rows], device=state.generated.device)
        self.round += 1
        reference = self.reference[state.row_index]
        return oracle_drafts(reference, state.generated, accepted, num_drafts, self.vocab_size), None


def oracle_factory(reference: torch.Tensor, rounds: list[list[int]], vocab_size: int):
    """A `drafter_factory` for `speculative_generate`: an `OracleDrafter` around the family's own drafter (nothing
    else of the engine changes)."""

    def make_oracle(model, num_depths=None):
        heads_drafter = decoding.make_drafter(model, num_depths)
        return (
            OracleDrafter(heads_drafter, reference, rounds, vocab_size) if heads_drafter.num_depths else heads_drafter
        )

    return make_oracle


# ----------------------------------------------------------------------------------------------------------------------
# replaying
# ----------------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Replay:
    """A trace with the plain greedy continuation of each of its prompts on the replay model (`reference` [P, L],
    new tokens only, L = max_new_tokens + D: the oracle reads up to D tokens past a row's last commit)."""

    trace: Trace
    reference: torch.Tensor
    max_new_tokens: int

    def prompt_index(self, ids: torch.Tensor, mask: torch.Tensor) -> list[int]:
        """The trace's index of each row of a (left-padded) batch."""
        index = {tuple(p): i for i, p in enumerate(self.trace.prompts)}
        rows = [tuple(row[m.bool()].tolist()) for row, m in zip(ids, mask)]
        missing = [r for r in rows if r not in index]
        if missing:
            raise ValueError(f"replay: a prompt not in the trace: {list(missing[0][:8])}...")
        return [index[r] for r in rows]


def prepare_replay(trace: Trace, base, pad: int, max_new_tokens: int | None = None, prompts: int | None = None):
    """The reference continuations on `base` (greedy `generate` at batch 1, EOS off: the model must have none) of the
    trace's first `prompts` prompts, for decodes of `max_new_tokens` (default: the trace's)."""
    max_new_tokens = trace.max_new_tokens if max_new_tokens is None else max_new_tokens
    kept = trace.prompts[:prompts]
    trace = dataclasses.replace(
        trace, prompts=kept, rounds={family: rows[: len(kept)] for family, rows in trace.rounds.items()}
    )
    for family in trace.rounds:
        for i in range(len(trace.prompts)):
            trace.rounds_for(family, i, max_new_tokens)  # covers max_new_tokens, or a ValueError
    if base.generation_config.eos_token_id is not None:
        raise ValueError(f"replay needs a model without EOS, got eos_token_id={base.generation_config.eos_token_id}")
    length = max_new_tokens + trace.num_draft_tokens
    reference = []
    with torch.no_grad():
        for prompt in trace.prompts:
            ids = torch.tensor([prompt])
            out = base.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=length, do_sample=False, pad_token_id=pad
            )
            reference.append(out[0, ids.size(1) :])
    return Replay(trace, torch.stack(reference), max_new_tokens)


def check_replay(replay: Replay, family: str, index: list[int], stats: dict, max_new_tokens: int) -> None:
    """Every row's rounds kept exactly the trace's accepted lengths (a ValueError names the first that did not)."""
    for r, i in enumerate(index):
        kept = [accepted[r] for accepted in stats["accepted_per_round"] if accepted[r] >= 0]
        expected = replay.trace.rounds_for(family, i, max_new_tokens)
        if kept != expected:
            raise ValueError(f"replay of {family}: prompt {i} kept {kept} drafts per round, the trace has {expected}")


def replay_decode(model, replay: Replay, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int, pad: int):
    """(output, stats) of the real engine on a batch of the trace's prompts, drafting with the oracle, checked."""
    family = model.heads.head_type
    if family not in replay.trace.rounds:
        raise ValueError(
            f"replay: the trace has no rounds for family {family!r} (it has {sorted(replay.trace.rounds)})"
        )
    if model.heads.num_depths != replay.trace.num_draft_tokens:
        raise ValueError(
            f"replay: the trace drafts D = {replay.trace.num_draft_tokens} per round, the model's {family} heads "
            f"have {model.heads.num_depths}"
        )
    if max_new_tokens > replay.max_new_tokens:
        raise ValueError(f"replay: max_new_tokens = {max_new_tokens} exceeds the reference's {replay.max_new_tokens}")
    index = replay.prompt_index(ids, mask)
    rounds = [replay.trace.rounds[family][i] for i in index]
    out, stats = speculative_generate(
        model,
        ids,
        mask,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=pad,
        drafter_factory=oracle_factory(replay.reference[index], rounds, replay.trace.vocab_size),
    )
    check_replay(replay, family, index, stats, max_new_tokens)
    return out, stats


# A random model initialised as for training (0.02) repeats one token forever, and under such a reference an oracle
# off by a position would draft the right token anyway: wider weights make the continuation vary, so the output
# check also checks the oracle's alignment. The forward's cost does not depend on the weights' values.
REPLAY_INIT_RANGE = 0.3


def replay_models(trace: Trace, preset: str, seed: int = 0, **overrides) -> dict:
    """{"mtp-<family>": MTPForCausalLM}: the trace's head families on random-weight `preset` bases (the same weights
    under every head set, as the benchmark's trained models; no EOS token), heads drawn from `seed`."""
    models = {}
    overrides = {"initializer_range": REPLAY_INIT_RANGE, **overrides}
    for family, head_config in trace.head_configs.items():
        base = build_model(preset, trace.vocab_size, seed=seed, **overrides)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            models[f"mtp-{family}"] = MTPForCausalLM.from_base(base, MTPConfig.from_dict(head_config)).eval()
    return models
