"""The replay benchmark (`trl_mtp.benchmarks.replay`, `trl-mtp bench decode --replay`): a recorded trace of accepted
lengths replayed by oracle drafts through the real engine on another model. Checked here: the oracle's drafts by hand;
every replayed round keeps exactly its recorded length and the output equals plain greedy decoding (all four
families, batch 1 and a batch whose rows finish at different rounds); an oracle off by one position fails that check;
the trace file round-trips; bad input gets a one-line error naming the bad value. Models are tiny and float64 (a
verify of D + 1 tokens and a one-token step sum in a different order; in float64 no argmax is near enough a tie to
flip). Timings are never asserted."""

from __future__ import annotations

import json
import random

import pytest
import torch

import trl_mtp.benchmarks.decode as bench
import trl_mtp.benchmarks.replay as replay
import trl_mtp.decoding as decoding
from trl_mtp.config import HEAD_TYPES, MTPConfig
from trl_mtp.decoding import left_pad
from trl_mtp.embedded.presets import build_model
from trl_mtp.model import MTPForCausalLM

VOCAB, D, PAD = 96, 3, 0
PROMPTS = [[5, 6, 7, 8, 9], [10, 11, 12, 13, 14], [20, 21, 22, 23, 24]]


def _model(family: str, seed: int = 0, layers: int = 2) -> MTPForCausalLM:
    # wide initial weights: the continuation varies (at 0.02 a random model repeats one token, and an oracle off by
    # a position would draft the right token anyway)
    base = build_model("tiny-llama", VOCAB, seed=seed, num_hidden_layers=layers, initializer_range=0.3).double()
    return MTPForCausalLM(base, MTPConfig(head_type=family, num_mtp_heads=D)).double().eval()


def _synthetic_trace(max_new_tokens: int = 12, seed: int = 0) -> replay.Trace:
    """Random accepted lengths 0..D per round, every value present, enough rounds to cover max_new_tokens."""
    rng = random.Random(seed)
    rounds = {}
    for family in HEAD_TYPES:
        rows = []
        for _ in PROMPTS:
            row = list(range(D + 1))  # 0 and D (all kept) both occur
            rng.shuffle(row)
            row += [rng.randint(0, D) for _ in range(max_new_tokens)]
            rows.append(row)
        rounds[family] = rows
    configs = {f: MTPConfig(head_type=f, num_mtp_heads=D).to_dict() for f in HEAD_TYPES}
    return replay.Trace(D, max_new_tokens, VOCAB, PAD, PROMPTS, rounds, configs, {"by": "test"})


def _replay(trace, family, max_new_tokens=12):
    model = _model(family, seed=1, layers=3)  # another model than the recording's
    plan = replay.prepare_replay(trace, model.base_model, PAD, max_new_tokens)
    assert all(len(set(row.tolist())) > max_new_tokens // 2 for row in plan.reference)  # not one token repeated
    return model, plan


def test_oracle_drafts_by_hand():
    reference = torch.tensor([[10, 11, 12, 13, 14, 15], [30, 31, 32, 33, 34, 35]])
    # row 0 committed 2 new tokens (10, 11): the next are 12, 13, 14; keep 1 -> 12, then wrong 13 + 1, 14 + 1
    # row 1 committed 1 (30): keep all 3 -> 31, 32, 33
    drafts = replay.oracle_drafts(reference, torch.tensor([2, 1]), torch.tensor([1, 3]), 3, VOCAB)
    assert drafts.tolist() == [[12, 14, 15], [31, 32, 33]]
    wrap = replay.oracle_drafts(torch.tensor([[0, VOCAB - 1]]), torch.tensor([1]), torch.tensor([0]), 1, VOCAB)
    assert wrap.tolist() == [[0]]  # the wrong token stays in the vocabulary


@pytest.mark.parametrize("family", HEAD_TYPES)
def test_replay_keeps_every_recorded_length_and_equals_greedy(family):
    trace = _synthetic_trace()
    model, plan = _replay(trace, family)
    ids, mask = left_pad(PROMPTS, PAD)
    greedy = model.base_model.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=PAD)
    for rows in ([0], [1], [0, 1, 2]):  # batch 1, and a batch whose rows finish in different rounds
        ids, mask = left_pad([PROMPTS[i] for i in rows], PAD)
        out, stats = replay.replay_decode(model, plan, ids, mask, 12, PAD)  # checks the lengths itself
        assert torch.equal(out, greedy[rows])
        for r, i in enumerate(rows):  # and here again, against the trace by hand
            kept = [a[r] for a in stats["accepted_per_round"] if a[r] >= 0]
            assert kept == trace.rounds[family][i][: len(kept)]
            assert 1 + sum(a + 1 for a in kept[:-1]) < 12 <= 1 + sum(a + 1 for a in kept)


def test_an_oracle_off_by_one_position_fails_the_check(monkeypatch):
    trace = _synthetic_trace()
    model, plan = _replay(trace, "blockwise")
    ids, mask = left_pad(PROMPTS[:2], PAD)
    replay.replay_decode(model, plan, ids, mask, 12, PAD)  # the right oracle passes
    right = replay.oracle_drafts

    def one_back(reference, generated, accepted, num_drafts, vocab_size):  # drafts the token already committed
        return right(reference, generated - 1, accepted, num_drafts, vocab_size)

    monkeypatch.setattr(replay, "oracle_drafts", one_back)
    with pytest.raises(ValueError, match=r"replay of blockwise: prompt 0 kept \[.*\] drafts per round, the trace has"):
        replay.replay_decode(model, plan, ids, mask, 12, PAD)


def test_replay_passes_its_drafter_and_patches_no_global(monkeypatch):
    """The oracle reaches the engine through `drafter_factory`: while a replay runs, `decoding.make_drafter` is still
    the engine's own (a replay patching that global would change every other decode running meanwhile)."""
    trace = _synthetic_trace()
    model, plan = _replay(trace, "medusa")
    ids, mask = left_pad(PROMPTS[:1], PAD)
    own, seen = decoding.make_drafter, []
    propose = replay.OracleDrafter.propose

    def recording(self, *args):
        seen.append(decoding.make_drafter is own)
        return propose(self, *args)

    monkeypatch.setattr(replay.OracleDrafter, "propose", recording)
    replay.replay_decode(model, plan, ids, mask, 12, PAD)
    assert seen and all(seen)


def test_an_oracle_that_keeps_fewer_drafts_runs_out_of_rounds(monkeypatch):
    """A trace of exactly the rounds a decode needs: an oracle whose drafts are all wrong needs more, named."""
    trace = _synthetic_trace()
    trace.rounds = {f: [trace.rounds_for(f, i, 12) for i in range(len(PROMPTS))] for f in trace.rounds}
    model, plan = _replay(trace, "medusa")
    ids, mask = left_pad(PROMPTS[1:2], PAD)
    replay.replay_decode(model, plan, ids, mask, 12, PAD)  # the right oracle passes
    right = replay.oracle_drafts
    monkeypatch.setattr(replay, "oracle_drafts", lambda ref, gen, acc, n, v: right(ref, gen, acc * 0, n, v))
    rounds = len(trace.rounds["medusa"][1])
    with pytest.raises(ValueError, match=rf"row 0 of the batch needs round {rounds + 1}, its trace has {rounds} "):
        replay.replay_decode(model, plan, ids, mask, 12, PAD)


def test_record_then_replay_on_another_model():
    """Recorded on one model (its heads' real acceptance), replayed on another: the same lengths, greedy's output."""
    recorded = {f: _model(f) for f in ("blockwise", "sequential")}
    trace = replay.record_trace(recorded, PROMPTS[:2], 10, PAD, {"by": "test"})
    assert (
        trace.num_draft_tokens == D and trace.vocab_size == VOCAB and set(trace.rounds) == {"blockwise", "sequential"}
    )
    for family, model in recorded.items():
        for i, prompt in enumerate(PROMPTS[:2]):
            _, stats = model.speculative_generate(torch.tensor([prompt]), max_new_tokens=10, pad_token_id=PAD)
            assert trace.rounds[family][i] == [a[0] for a in stats["accepted_per_round"]]
    for family in trace.rounds:
        model, plan = _replay(trace, family, 10)
        ids, mask = left_pad(PROMPTS[:2], PAD)
        out, _ = replay.replay_decode(model, plan, ids, mask, 10, PAD)
        greedy = model.base_model.generate(
            ids, attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=PAD
        )
        assert torch.equal(out, greedy)


def test_trace_round_trips(tmp_path):
    trace = _synthetic_trace()
    trace.save(tmp_path / "trace.json")
    assert replay.Trace.load(tmp_path / "trace.json") == trace


def _one_line_error(match, fn, *args, **kwargs):
    with pytest.raises(ValueError, match=match) as error:
        fn(*args, **kwargs)
    assert "\n" not in str(error.value)


def test_bad_traces_are_named(tmp_path):
    path = tmp_path / "trace.json"
    _one_line_error(r"replay trace '.*missing.json': no such file", replay.Trace.load, tmp_path / "missing.json")
    path.write_text("{not json")
    _one_line_error(r"trace.json': not JSON", replay.Trace.load, path)
    good = json.loads(json.dumps({"format": replay.TRACE_FORMAT, **_synthetic_trace().__dict__}))

    def load(drop=(), **change):
        path.write_text(json.dumps({k: v for k, v in {**good, **change}.items() if k not in drop}))
        return replay.Trace.load(path)

    load()  # the unchanged trace loads
    _one_line_error(r"empty \(0 prompts, 4 families\)", load, prompts=[], rounds={f: [] for f in HEAD_TYPES})
    _one_line_error(r"empty \(3 prompts, 0 families\)", load, rounds={})
    _one_line_error(r"family 'medusa', prompt 1 has no rounds", load, rounds={"medusa": [[1], [], [2]]})
    _one_line_error(
        r"family 'medusa', prompt 0: accepted length 4 outside 0..D = 3", load, rounds={"medusa": [[1, 4], [0], [2]]}
    )
    _one_line_error(r"family 'blockwise' has 3 heads, the trace drafts D = 4", load, num_draft_tokens=4)
    _one_line_error(r"missing fields \['prompts'\], unknown \[\]", load, drop=("prompts",))
    _one_line_error(r"unknown \['draft'\]", load, draft=4)
    _one_line_error(r"num_draft_tokens = 4.0, not of type int", load, num_draft_tokens=4.0)
    _one_line_error(r"rounds = \[\], not of type dict", load, rounds=[])
    _one_line_error(r"not a trace \(no 'format'", load, format="other")


def test_bad_replays_are_named():
    trace = _synthetic_trace()
    model, plan = _replay(trace, "blockwise")
    ids, mask = left_pad(PROMPTS[:1], PAD)
    other_depth = MTPForCausalLM(model.base_model, MTPConfig(head_type="blockwise", num_mtp_heads=2)).double().eval()
    _one_line_error(
        r"the trace drafts D = 3 per round, the model's blockwise heads have 2",
        replay.replay_decode,
        other_depth,
        plan,
        ids,
        mask,
        12,
        PAD,
    )
    _one_line_error(
        r"max_new_tokens = 13 exceeds the reference's 12", replay.replay_decode, model, plan, ids, mask, 13, PAD
    )
    unknown = left_pad([[1, 2, 3]], PAD)
    _one_line_error(r"a prompt not in the trace: \[1, 2, 3\]", replay.replay_decode, model, plan, *unknown, 12, PAD)
    short = _synthetic_trace(max_new_tokens=4)
    short.rounds["blockwise"][2] = [0, 0]  # covers 1 + 2 = 3 new tokens
    _one_line_error(
        r"family 'blockwise', prompt 2 covers 3 new tokens, max_new_tokens = 4",
        replay.prepare_replay,
        short,
        model.base_model,
        PAD,
        4,
    )
    with_eos = _model("blockwise", seed=1)
    with_eos.base_model.generation_config.eos_token_id = 7
    _one_line_error(r"a model without EOS, got eos_token_id=7", replay.prepare_replay, trace, with_eos.base_model, PAD)


def test_replay_through_the_decode_benchmark(tmp_path, capsys):
    """`bench decode --replay`: the trace's families on random-weight models, every row paired and checked."""
    trace = _synthetic_trace(max_new_tokens=16)
    trace = replay.Trace(**{**trace.__dict__, "vocab_size": 2048})
    trace.save(tmp_path / "trace.json")
    out = tmp_path / "replay.json"
    argv = ["--replay", str(tmp_path / "trace.json"), "--replay-preset", "tiny-llama", "--quick"]
    assert bench.main([*argv, "--families", "blockwise,parallel", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    rows = results["batches"]["1"]
    assert set(rows) == {"greedy", "loop-k0", "mtp-blockwise", "mtp-parallel"}
    assert all(r["identical_to_greedy"] and len(r["seconds"]) == 2 for r in rows.values())
    assert rows["mtp-parallel"]["ceiling_vs_loop_k0"] > 0 and results["replay"]["preset"] == "tiny-llama"
    assert not bench.DECODERS  # the oracle's decoders end with the run: a later benchmark's methods are its own
    with pytest.raises(ValueError, match="--replay runs the trace's families only"):
        bench.main([*argv, "--adaptive"])


@pytest.mark.slow
def test_record_and_replay_from_the_command_line(tmp_path):
    """`--record-trace` on the (quick) trained models, then `--replay` of that file: both through `bench decode`."""
    trace_path, out = tmp_path / "trace.json", tmp_path / "replay.json"
    assert bench.main(["--quick", "--families", "blockwise,sequential", "--record-trace", str(trace_path)]) == 0
    trace = replay.Trace.load(trace_path)
    assert set(trace.rounds) == {"blockwise", "sequential"} and len(trace.prompts) == 2 and trace.max_new_tokens == 16
    assert trace.source["pretrain_task"] == "stdlib" and trace.num_draft_tokens == 4
    argv = ["--quick", "--replay", str(trace_path), "--replay-preset", "tiny-llama", "--json", str(out)]
    assert bench.main(argv) == 0
    rows = json.loads(out.read_text())["batches"]["1"]
    assert all(r["identical_to_greedy"] for r in rows.values())
    for family, per_prompt in trace.rounds.items():  # the replay ran every recorded round (the same 16 tokens)
        prefill_and_rounds = len(per_prompt) + sum(map(len, per_prompt))
        tokens = len(per_prompt) + sum(a + 1 for rounds in per_prompt for a in rounds)
        assert rows[f"mtp-{family}"]["mean_accepted_length"] == pytest.approx(tokens / prefill_and_rounds)
