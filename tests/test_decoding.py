"""Self-speculative decoding (`trl_mtp.decoding`): lossless under greedy decoding (sampling: test_decoding_sampling.py).

Greedy identity is checked in float64: a verify forward over D+1 tokens and `generate`'s one-token steps sum in a
different order, so in float32 an argmax near a tie could flip; in float64 no tie is that close. Untrained tiny models
repeat their input, so drafts from fresh heads are mostly accepted ("accept-heavy"); heads perturbed from depth 2 on
give rejections at varying depths per row ("mixed"). Identity must hold in both.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from decoding_models import (
    FAMILIES,
    PAD,
    VOCAB,
    RandomPlanner,
    ScriptedPlanner,
    check_identity,
    make_model,
    random_batch,
    reference,
    wrap,
)

import trl_mtp.decoding as decoding
from trl_mtp.config import MTPConfig
from trl_mtp.decoding import pool_acceptance, slot_positions
from trl_mtp.embedded.presets import build_model
from trl_mtp.model import MTPForCausalLM


# -- greedy: identical to generate -----------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("regime", ["accept-heavy", "mixed"])
def test_greedy_identity_many_prompts(family, regime):
    model = make_model(family, perturb=0.0 if regime == "accept-heavy" else 0.3)
    accepted = []
    for seed in range(6):
        batch = 1 if seed % 2 == 0 else 2 + seed % 3
        ids, mask = random_batch(seed, batch)
        stats = check_identity(model, ids, mask, max_new_tokens=12 + 3 * seed)
        accepted += stats["acceptance_by_position"]
        assert stats["mean_accepted_length"] >= 1.0
    mean = sum(accepted) / len(accepted)
    if regime == "accept-heavy":
        assert mean > 0.5, "test model should accept most drafts"
    else:
        assert 0.0 < mean < 0.9, "test model should reject some drafts and keep others"


@pytest.mark.parametrize("preset", ["tiny-qwen3", "tiny-gpt2"])
@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_identity_other_architectures(preset, family):
    # GPT-2 has learned absolute positions: holes in the cache must not shift them
    for perturb in (0.0, 0.3):
        model = make_model(family, preset, perturb=perturb, seed=1)
        ids, mask = random_batch(7, 3)
        check_identity(model, ids, mask, max_new_tokens=16)


@pytest.mark.parametrize("family", FAMILIES)
def test_max_new_tokens_mid_block(family):
    model = make_model(family, depths=4)
    ids, mask = random_batch(3, 2)
    for max_new_tokens in range(1, 12):
        stats = check_identity(model, ids, mask, max_new_tokens)
    assert max(max(r) for r in stats["accepted_per_round"]) >= 2  # blocks longer than 1: cuts land inside them


def oracle_drafts(monkeypatch, ref, wrong_every: int = 0):
    """Make every drafter propose the true greedy continuation `ref` (after running its own propose, so its caches
    stay as they would be); with `wrong_every`, every such-th draft is corrupted: rejections at chosen depths."""
    import trl_mtp.decoding as decoding

    make = decoding.make_drafter

    def make_oracle(model, *args):
        drafter = make(model, *args)
        propose = drafter.propose

        def oracle(state, sampler, num_drafts):
            drafts, probs = propose(state, sampler, num_drafts)
            cols = state.column(state.n_valid)[:, None] + 1 + torch.arange(drafts.size(1))
            truth = ref.gather(1, cols.clamp(max=ref.size(1) - 1))
            if wrong_every:
                flip = (cols % wrong_every) == 0
                truth = torch.where(flip, (truth + 1) % VOCAB, truth)
            return truth, probs

        drafter.propose = oracle
        return drafter

    monkeypatch.setattr(decoding, "make_drafter", make_oracle)


@pytest.mark.parametrize("family", FAMILIES)
def test_eos_inside_accepted_block(family, monkeypatch):
    model = make_model(family, depths=4, perturb=0.3)
    ids, mask = random_batch(4, 3)
    free = reference(model, ids, mask, 40)
    oracle_drafts(monkeypatch, free)
    T = ids.size(1)
    for j in range(1, 12):  # EOS = the row-0 token at generated index j (first occurrence), reached as a draft
        eos = int(free[0, T + j])
        if eos in free[0, T : T + j].tolist():
            continue
        stats = check_identity(model, ids, mask, 40, eos=eos)
        assert stats["mean_accepted_length"] > 4.0  # oracle drafts: whole blocks accepted, EOS inside one


@pytest.mark.parametrize("family", FAMILIES)
def test_rejections_at_chosen_depths(family, monkeypatch):
    model = make_model(family, depths=4, perturb=0.3)
    ids, mask = random_batch(5, 3)
    oracle_drafts(monkeypatch, reference(model, ids, mask, 40), wrong_every=3)
    stats = check_identity(model, ids, mask, 30)
    assert 1.5 < stats["mean_accepted_length"] < 4.0
    assert len({k for r in stats["accepted_per_round"] for k in r if k >= 0}) >= 2  # rows keep different counts


def test_batch_rows_finish_at_different_times():
    model = make_model("blockwise", perturb=0.3)
    ids, mask = random_batch(11, 5)
    free = reference(model, ids, mask, 20)[:, ids.size(1) :]
    eos = int(free[2, 5])  # row 2 ends at its 6th token at the latest; others whenever they meet this token
    stats = check_identity(model, ids, mask, 20, eos=eos)
    assert min(len([k for k in r if k >= 0]) for r in stats["accepted_per_round"]) < ids.size(0)  # some rows stopped


def test_stats_fields_and_method():
    model = make_model("medusa")
    ids, mask = random_batch(0, 1)
    out, stats = model.speculative_generate(ids, mask, max_new_tokens=10, eos_token_id=None, pad_token_id=PAD)
    assert out.shape == (1, ids.size(1) + 10)
    for key in (
        "mean_accepted_length",
        "acceptance_by_position",
        "forwards",
        "drafted",
        "accepted",
        "wall_time_s",
        "tokens_per_s",
        "new_tokens",
    ):
        assert key in stats
    assert stats["new_tokens"] == 10 and len(stats["acceptance_by_position"]) == 3
    assert stats["forwards"] < 10  # accept-heavy: fewer base forwards than tokens
    assert stats["mean_accepted_length"] == pytest.approx(
        1 + sum(stats["acceptance_by_position"]) * (stats["forwards"] - 1) / stats["forwards"]
    )


def test_pooled_acceptance_weighs_every_round_of_every_row_alike():
    model = make_model("sequential", perturb=0.5)  # depth 1 good, deeper heads noisy: rounds keep 0..3 drafts
    ids, mask = random_batch(3, 4)
    calls = [
        model.speculative_generate(
            ids[i : i + 1], mask[i : i + 1, :], max_new_tokens=12, eos_token_id=None, pad_token_id=PAD
        )[1]
        for i in range(4)
    ]
    kept = [k for st in calls for round_ in st["accepted_per_round"] for k in round_ if k >= 0]
    pooled = pool_acceptance(calls)
    assert pooled["mean_accepted_length"] == pytest.approx((sum(k + 1 for k in kept) + 4) / (len(kept) + 4))
    assert pooled["acceptance_by_position"] == pytest.approx([sum(k > i for k in kept) / len(kept) for i in range(3)])
    assert len(set(kept)) > 1  # rounds differ, so pooling differs from a mean of per-call means in general
    assert pool_acceptance(calls[:1]) == {
        key: calls[0][key] for key in ("mean_accepted_length", "acceptance_by_position", "acceptance_by_depth")
    }
    fewer = model.speculative_generate(
        ids[:1], mask[:1], max_new_tokens=4, eos_token_id=None, pad_token_id=PAD, num_draft_tokens=1
    )[1]
    with pytest.raises(ValueError, match=r"same number of tokens, got \[1, 3\]"):
        pool_acceptance([calls[0], fewer])


def test_float32_trained_like_model_matches():
    # float32, as used in practice: identical on these prompts (no near-ties); documented as float-exactness caveat
    base = build_model("tiny-llama", VOCAB, seed=3, num_hidden_layers=2)
    model = MTPForCausalLM(base, MTPConfig(head_type="blockwise", num_mtp_heads=3)).eval()
    ids, mask = random_batch(5, 3)
    check_identity(model, ids, mask, 16)


@pytest.mark.parametrize("family", FAMILIES)
def test_rows_finishing_mid_block_while_others_run(family):
    """A row that reaches max_new_tokens inside an accepted block stops while the other rows go on drafting: its
    scratch columns must stay inside the token buffer (a batch-8 benchmark once indexed past it)."""
    model = make_model(family, depths=4, perturb=0.1, perturb_from=2)
    for seed, max_new_tokens in ((21, 14), (22, 13), (23, 14), (25, 17)):  # seen to finish rows mid-block early
        ids, mask = random_batch(seed, 6)
        check_identity(model, ids, mask, max_new_tokens)


def _sequential_windows(model, ids, mask, max_new_tokens, eos, monkeypatch):
    """Slots of the window the sequential drafter recomputes, per round (speculative output checked too)."""
    windows = []
    propose = decoding.SequentialDrafter.propose

    def recording(self, state, sampler, num_drafts):
        windows.append(state.mask.size(1) - self.start)
        return propose(self, state, sampler, num_drafts)

    monkeypatch.setattr(decoding.SequentialDrafter, "propose", recording)
    check_identity(model, ids, mask, max_new_tokens, eos=eos)
    return windows


def test_sequential_window_follows_the_rows_still_decoding(monkeypatch):
    """A row that finished early must not pin the sequential drafter's window: it stays a few slots wide (at most
    D + the holes of one round) however long the others go on; counting finished rows that stay in the batch made it
    grow every round (finished rows now also leave the batch: either keeps the window narrow)."""
    model = make_model("sequential", depths=3, perturb=0.3)
    ids, mask = random_batch(11, 5)
    free = reference(model, ids, mask, 40)[:, ids.size(1) :]
    eos = int(free[2, 2])  # row 2 ends at its 3rd token at the latest; others run on
    windows = _sequential_windows(model, ids, mask, 40, eos, monkeypatch)
    assert max(windows[1:]) <= 2 * (3 + 1) + 1, windows  # round 1 recomputes the prompt
    assert len(windows) > 8  # long enough that a pinned window would have grown past the bound

    monkeypatch.undo()  # the recording propose of the first run
    monkeypatch.setattr(decoding.DecodeState, "drop_finished", lambda self, drafter: None)  # finished rows stay
    monkeypatch.setattr(
        decoding.SequentialDrafter,
        "plan_figure",
        lambda self, mask, n_valid, done: (
            (  # every row
                slot_positions(mask) > (n_valid - self.num_depths)[:, None]
            )
            .float()
            .argmax(1)
            .long()
        ),
    )
    pinned = _sequential_windows(model, ids, mask, 40, eos, monkeypatch)
    assert max(pinned[1:]) > 2 * (3 + 1) + 1, pinned  # the old rule (all rows) lets the window grow


HOST_READS = ("tolist", "item", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__")


def count_host_reads(monkeypatch) -> list[int]:
    """Counts every read of a tensor's value back to Python (the syncs a GPU would wait on)."""
    calls = [0]
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _original=original, **kwargs):
            calls[0] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    return calls


@pytest.mark.parametrize("family", FAMILIES)
def test_one_host_read_per_round(family, monkeypatch):
    """A round reads the device back once (lengths and counts live as Python ints): reads grow by exactly one per
    verify round; the reads of setup, prefill and the output are a fixed number whatever the rounds."""
    model = make_model(family, perturb=0.3)
    ids, mask = random_batch(4, 3)
    totals = {}
    for max_new_tokens in (8, 24):
        calls = count_host_reads(monkeypatch)
        _, stats = model.speculative_generate(
            ids, mask, max_new_tokens=max_new_tokens, eos_token_id=[], pad_token_id=PAD
        )
        monkeypatch.undo()
        totals[max_new_tokens] = (calls[0], stats["forwards"])
    (short, short_forwards), (long, long_forwards) = totals[8], totals[24]
    assert long_forwards > short_forwards
    assert long - short == long_forwards - short_forwards, totals


def test_host_read_counter_sees_a_read_per_round(monkeypatch):
    """The counter catches a per-round read: an extra `.item()` in every round breaks the one-read rule."""
    update = decoding.update_cache

    def with_extra_read(*args, **kwargs):
        args[1].n_valid.max().item()
        return update(*args, **kwargs)

    monkeypatch.setattr(decoding, "update_cache", with_extra_read)
    model = make_model("blockwise", perturb=0.3)
    ids, mask = random_batch(4, 3)
    reads = []
    for max_new_tokens in (8, 24):
        with monkeypatch.context() as patch:
            calls = count_host_reads(patch)
            forwards = model.speculative_generate(
                ids, mask, max_new_tokens=max_new_tokens, eos_token_id=[], pad_token_id=PAD
            )[1]["forwards"]
        reads.append((calls[0], forwards))
    assert reads[1][0] - reads[0][0] == 2 * (reads[1][1] - reads[0][1])


@pytest.mark.parametrize("family", ["blockwise", "parallel"])
def test_all_depths_projected_at_once_outside_the_capture_hook(family, monkeypatch):
    """Per round: one LM head call for the verify and one for all D depths' drafts, and the final norm's hooks (the
    trunk's capture among them) fire for the verify only; depth-by-depth projection through the hooked modules fails."""
    model = make_model(family, perturb=0.3)
    ids, mask = random_batch(4, 2)

    def count():
        lm_head, norm = model.trunk.lm_head, model.trunk.final_norm
        calls = {"lm_head": 0, "norm_hook": 0}
        forward = lm_head.forward

        def counting(*args, **kwargs):
            calls["lm_head"] += 1
            return forward(*args, **kwargs)

        monkeypatch.setattr(lm_head, "forward", counting)
        handle = norm.register_forward_pre_hook(lambda *_: calls.__setitem__("norm_hook", calls["norm_hook"] + 1))
        try:  # speculative decoding only (generate's own calls not counted)
            stats = model.speculative_generate(ids, mask, max_new_tokens=16, eos_token_id=[], pad_token_id=PAD)[1]
        finally:
            handle.remove()
            monkeypatch.undo()
        return calls, stats["forwards"]

    calls, forwards = count()
    assert calls == {"lm_head": 2 * forwards - 1, "norm_hook": forwards}
    monkeypatch.setattr(
        decoding.Drafter,
        "project",
        lambda self, hiddens: torch.stack([self.heads.depth_logits(i, h) for i, h in enumerate(hiddens, start=1)], 1),
    )
    broken, forwards = count()
    assert broken["norm_hook"] == forwards + 3 * (forwards - 1)


def test_parallel_heads_run_over_kept_slots_only(monkeypatch):
    """The parallel heads' layers see, each round, the slots the longest-accepting row kept (k + 1), not all D + 1
    verified slots (run when the next round drafts: the last round's slots are never run); running them over every
    verified slot fails."""
    model = make_model("parallel", perturb=0.3)
    ids, mask = random_batch(4, 3)

    def slots_seen():
        seen = []
        depth_hidden = type(model.heads).depth_hidden

        def recording(self, depth, trunk_hidden, **kwargs):
            if depth == 1:
                seen.append(trunk_hidden.size(1))
            return depth_hidden(self, depth, trunk_hidden, **kwargs)

        with monkeypatch.context() as patch:
            patch.setattr(type(model.heads), "depth_hidden", recording)
            stats = check_identity(model, ids, mask, 20)
        return seen, stats

    seen, stats = slots_seen()
    expected = [ids.size(1)] + [max(k for k in round_ if k >= 0) + 1 for round_ in stats["accepted_per_round"][:-1]]
    assert seen == expected and min(expected[1:]) < 4  # some round kept fewer than D + 1 = 4 slots
    observe = decoding.ParallelDrafter.observe
    monkeypatch.setattr(
        decoding.ParallelDrafter,
        "observe",
        lambda self, state, hidden, kwargs, update: observe(
            self, state, hidden, kwargs, dataclasses.replace(update, keep=update.new_start + hidden.size(1))
        ),
    )
    with pytest.raises(Exception):  # noqa: B017 (an assertion or a shape error: either shows it) every verified slot run: the drafts differ, the stats or the slots seen too
        seen, stats = slots_seen()
        assert seen == [ids.size(1)] + [max(k for k in r if k >= 0) + 1 for r in stats["accepted_per_round"][:-1]]


def test_parallel_heads_under_a_registered_attention(monkeypatch):
    """With an attention `window_attention_mask` builds no mask for (here sdpa registered under another name, as a
    custom kernel would be), the parallel heads run every round with the base's own layer kwargs: rows finishing at
    different times leave the batch, and the output is still `generate`'s. Catching up with a window mask of their own
    (as for sdpa) fails: the first drafting round after a row left raises."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    calls = []

    def renamed_sdpa(module, *args, **kwargs):
        calls.append(module)
        return sdpa_attention_forward(module, *args, **kwargs)

    monkeypatch.setitem(AttentionInterface._global_mapping, "renamed_sdpa", renamed_sdpa)
    monkeypatch.setitem(AttentionMaskInterface._global_mapping, "renamed_sdpa", sdpa_mask)
    torch.manual_seed(0)  # the heads' initialisation
    base = build_model("tiny-llama", VOCAB, num_hidden_layers=2)
    base.set_attn_implementation("renamed_sdpa")  # before the heads copy the last layer (and its config)
    model = wrap(base, "parallel", perturb=0.3)
    ids, mask = random_batch(11, 5)
    eos = int(reference(model, ids, mask, 24)[2, ids.size(1) + 3])  # row 2 ends at its 4th token at the latest
    calls.clear()
    stats = check_identity(model, ids, mask, 24, eos=eos)
    assert min(sum(k >= 0 for k in round_) for round_ in stats["accepted_per_round"]) < 5  # rows left the batch
    assert any(any(m is h for h in model.heads.modules()) for m in calls)  # the heads ran the registered attention
    observe = decoding.ParallelDrafter.observe

    def catching_up(self, state, hidden, layer_kwargs, update):  # the heads' upkeep chosen as for sdpa
        attn_implementation, self.attn_implementation = self.attn_implementation, "sdpa"
        observe(self, state, hidden, layer_kwargs, update)
        self.attn_implementation = attn_implementation

    monkeypatch.setattr(decoding.ParallelDrafter, "observe", catching_up)
    with pytest.raises(NotImplementedError, match="parallel drafting supports sdpa and eager attention, not 'renamed"):
        check_identity(model, ids, mask, 24, eos=eos)


# -- finished rows leave the batch -----------------------------------------------------------------------------------
def verify_batch_sizes(model, monkeypatch, *args, **settings):
    """Rows of every base forward of a checked speculative decode, and its stats."""
    sizes = []
    forward = model.base_model.forward

    def recording(*f_args, **kwargs):
        sizes.append(kwargs["input_ids"].size(0))
        return forward(*f_args, **kwargs)

    reference_out = reference(model, *args, **settings)  # generate's own forwards are not recorded
    with monkeypatch.context() as patch:
        patch.setattr(model.base_model, "forward", recording)
        out, stats = decoding.speculative_generate(
            model, args[0], args[1], max_new_tokens=args[2], eos_token_id=args[3], pad_token_id=PAD, **settings
        )
    assert torch.equal(out, reference_out)
    return sizes, stats


@pytest.mark.parametrize("family", FAMILIES)
def test_finished_rows_leave_the_batch(family, monkeypatch):
    """Each verify runs over the rows still decoding only (a finished row's cache rows go with it), the output the
    same as `generate`'s; rows that stay in the batch once finished fail the check."""
    torch.manual_seed(0)  # the heads' initialisation

    model = make_model(family, perturb=0.3)
    ids, mask = random_batch(11, 5)
    free = reference(model, ids, mask, 24)[:, ids.size(1) :]
    eos = int(free[2, 3])  # row 2 ends at its 4th token at the latest; others whenever they meet this token
    sizes, stats = verify_batch_sizes(model, monkeypatch, ids, mask, 24, eos)
    live = [sum(k >= 0 for k in round_) for round_ in stats["accepted_per_round"]]
    assert sizes == [5] + live and min(live) < 5, (sizes, live)
    monkeypatch.setattr(decoding.DecodeState, "drop_finished", lambda self, drafter: None)
    kept, _ = verify_batch_sizes(model, monkeypatch, ids, mask, 24, eos)
    assert kept != [5] + live


def test_processors_keep_their_rows_once_rows_leave(monkeypatch):
    """Logits processors hold per-row settings of the caller's batch (the encoder repetition penalty keeps each
    row's prompt): rows leaving the batch must not shift them onto other rows."""
    torch.manual_seed(0)  # the heads' initialisation

    model = make_model("blockwise", perturb=0.3)
    ids, mask = random_batch(12, 5)
    settings = dict(encoder_repetition_penalty=3.0, no_repeat_ngram_size=2)
    free = reference(model, ids, mask, 20, **settings)[:, ids.size(1) :]
    eos = int(free[1, 2])
    stats = check_identity(model, ids, mask, 20, eos=eos, **settings)
    assert min(sum(k >= 0 for k in round_) for round_ in stats["accepted_per_round"]) < 5  # rows left

    def live_rows_only(self, state, logits, drafts, first=0):  # the processors see the live rows alone
        ids, committed = decoding.prefix_ids(state, drafts)
        lengths = committed[:, None] + first + torch.arange(logits.size(1))
        return decoding.apply_per_prefix(self.processors, ids, lengths, logits.float(), ~state.done)

    monkeypatch.setattr(decoding.Sampler, "scores", live_rows_only)
    with pytest.raises(Exception):  # noqa: B017 (a wrong token or a shape error: either shows it)
        check_identity(model, ids, mask, 20, eos=eos, **settings)


# -- adaptive drafting: any number of drafts per round, the same output ---------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_any_number_of_drafts_per_round_is_lossless(family):
    """Rounds drafting a random 0..D tokens each (rows finishing at different times, leaving the batch) give
    `generate`'s output; so does the adaptive planner itself."""
    torch.manual_seed(0)  # the heads' initialisation

    model = make_model(family, depths=3, perturb=0.3)
    ids, mask = random_batch(11, 5)
    free = reference(model, ids, mask, 24)[:, ids.size(1) :]
    eos = int(free[2, 4])
    for seed in range(2):
        stats = check_identity(model, ids, mask, 24, eos=eos, adaptive_draft_tokens=RandomPlanner(3, seed))
        assert set(stats["draft_tokens_per_round"]) == {0, 1, 2, 3}, stats["draft_tokens_per_round"]
    stats = check_identity(model, ids, mask, 24, eos=eos, adaptive_draft_tokens=True)
    assert len(set(stats["draft_tokens_per_round"])) >= 2  # it explores: several choices were verified


def drafts_by_prefix(model, ids, mask, max_new_tokens, planner, monkeypatch) -> list[tuple[list[int], list[int]]]:
    """(a row's prompt and committed tokens, the drafts proposed after them) for every row of every round that
    drafted."""
    make, seen = decoding.make_drafter, []

    def recording_drafter(model, *args):
        drafter = make(model, *args)
        propose = drafter.propose

        def recording(state, sampler, num_drafts):
            drafts, probs = propose(state, sampler, num_drafts)
            for r in range(drafts.size(0)):
                end = state.prompt_len + int(state.generated[r])
                seen.append((state.tokens[r, int(state.pad_len[r]) : end].tolist(), drafts[r].tolist()))
            return drafts, probs

        drafter.propose = recording
        return drafter

    with monkeypatch.context() as patch:
        patch.setattr(decoding, "make_drafter", recording_drafter)
        model.speculative_generate(
            ids, mask, max_new_tokens=max_new_tokens, eos_token_id=[], pad_token_id=PAD, adaptive_draft_tokens=planner
        )
    return seen


@pytest.mark.parametrize("family", FAMILIES)
def test_drafts_depend_on_the_committed_tokens_only(family, monkeypatch):
    """A depth drafts the same tokens whatever earlier rounds drafted: after rounds with random draft counts, each
    round's drafts equal those a fresh decode of the same tokens proposes first. The sequential heads keep a window per
    depth (a depth left behind by short rounds recomputes from where it stopped: sharing one window fails) and
    recompute every entry that read a draft since replaced (trusting the last one fails)."""
    torch.manual_seed(0)  # the heads' initialisation

    model = make_model(family, depths=3, perturb=0.3)
    ids, mask = random_batch(13, 3)

    def mismatches():
        seen = drafts_by_prefix(model, ids, mask, 20, RandomPlanner(3, seed=1), monkeypatch)
        assert len({len(d) for _, d in seen}) == 3  # rounds drafted 1, 2 and 3 tokens
        wrong = 0
        for prefix, drafts in seen:
            # the prompt without the last committed token: the prefill commits it (greedy), then D drafts follow it
            fresh = drafts_by_prefix(model, torch.tensor([prefix[:-1]]), None, 2, True, monkeypatch)
            assert fresh[0][0] == prefix and len(fresh[0][1]) == 3
            wrong += fresh[0][1][: len(drafts)] != drafts
        return wrong

    assert mismatches() == 0
    if family == "sequential":
        propose = decoding.SequentialDrafter.propose

        def one_window(self, state, sampler, num_drafts):  # every depth marked computed after any round
            out = propose(self, state, sampler, num_drafts)
            self.valid = [max(self.valid)] * len(self.valid)
            return out

        with monkeypatch.context() as patch, pytest.raises((AssertionError, RuntimeError)):  # other drafts, or a
            patch.setattr(decoding.SequentialDrafter, "propose", one_window)  # depth cache shorter than the window
            assert mismatches() == 0

        def last_entries_trusted(self, mask, n_valid, done):  # entries that read the replaced draft kept as final
            open_ = slot_positions(mask) > (n_valid - max(self.num_depths, 2))[:, None]
            return open_.float().argmax(1).long().masked_fill(done, mask.size(1))

        monkeypatch.setattr(decoding.SequentialDrafter, "plan_figure", last_entries_trusted)
        assert mismatches() > 0


def test_acceptance_by_depth_counts_verified_drafts():
    """acceptance_by_depth[i] = rows that kept draft i+1 / rows whose draft i+1 was verified; with D drafts every round
    it is the ratio of consecutive acceptance_by_position entries."""
    torch.manual_seed(1)  # the heads' initialisation: every depth kept in some rounds, rejected in others
    model = make_model("blockwise", depths=3, perturb=0.05)
    ids, mask = random_batch(4, 3)
    _, stats = model.speculative_generate(ids, mask, max_new_tokens=20, eos_token_id=[], pad_token_id=PAD)
    assert min(stats["acceptance_by_position"]) > 0 and stats["acceptance_by_depth"][2] < 1
    by_position = [1.0] + stats["acceptance_by_position"]
    assert stats["acceptance_by_depth"] == pytest.approx([b / a for a, b in zip(by_position, by_position[1:])])
    _, stats = model.speculative_generate(
        ids, mask, max_new_tokens=20, eos_token_id=[], pad_token_id=PAD, adaptive_draft_tokens=RandomPlanner(3)
    )
    rounds = [(n, k) for n, round_ in zip(stats["draft_tokens_per_round"], stats["accepted_per_round"]) for k in round_]
    for i in range(3):
        verified = [k for n, k in rounds if n > i and k >= i]
        assert stats["acceptance_by_depth"][i] == pytest.approx(sum(k > i for k in verified) / len(verified))
    assert len(stats["draft_tokens_per_round"]) == stats["forwards"] - 1  # the prefill drafts nothing
    assert stats["draft_tokens"] == pytest.approx(sum(stats["draft_tokens_per_round"]) / (stats["forwards"] - 1))


def test_bad_adaptive_settings_are_refused():
    model = make_model("blockwise", depths=3)
    ids, mask = random_batch(0, 1)
    with pytest.raises(ValueError, match="adaptive_draft_tokens must be a bool or a DraftPlanner, got 'yes'"):
        model.speculative_generate(ids, mask, max_new_tokens=4, adaptive_draft_tokens="yes")
    with pytest.raises(ValueError, match="up to 3 tokens, more than num_draft_tokens = 2"):
        model.speculative_generate(
            ids, mask, max_new_tokens=4, num_draft_tokens=2, adaptive_draft_tokens=RandomPlanner(3)
        )


# -- a round that drafts nothing costs what plain decoding costs ---------------------------------------------------
def head_calls_per_round(model, planner, ids, mask, max_new_tokens):
    """Forward calls of the heads' modules (any of them) during each round's choose .. next choose: [calls] per round;
    the prefill's come before the first round and are not counted."""
    calls, per_round = [0], []
    choose = planner.choose

    def counting_choose(*args, **kwargs):
        per_round.append(calls[0])
        calls[0] = 0
        return choose(*args, **kwargs)

    planner.choose = counting_choose
    hooks = [m.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1)) for m in model.heads.modules()]
    try:
        stats = check_identity(model, ids, mask, max_new_tokens, eos=None, adaptive_draft_tokens=planner)
    finally:
        for hook in hooks:
            hook.remove()
    per_round = per_round[1:] + [calls[0]]  # calls counted at the next choose belong to the round before
    return per_round, stats


@pytest.mark.parametrize("family", FAMILIES)
def test_rounds_without_drafts_run_no_head(family, monkeypatch):
    """A round drafting 0 tokens runs no head module (the parallel and sequential heads catch up over the skipped
    slots when a later round drafts); drafting rounds do run them. The former parallel drafter, running its layers
    over the kept slots every round, fails."""
    torch.manual_seed(0)
    model = make_model(family, depths=3, perturb=0.3)
    ids, mask = random_batch(7, 3)
    script = [0, 0, 0, 3, 0, 1, 0, 0, 2, 3]
    per_round, stats = head_calls_per_round(model, ScriptedPlanner(3, script), ids, mask, 30)
    drafted = stats["draft_tokens_per_round"]
    assert 0 in drafted and max(drafted) == 3
    assert [c for c, n in zip(per_round, drafted) if n == 0] == [0] * drafted.count(0)
    assert all(c > 0 for c, n in zip(per_round, drafted) if n > 0)
    if family == "parallel":
        catch_up, observe = decoding.ParallelDrafter.catch_up, decoding.ParallelDrafter.observe

        def eager(self, state, hidden, layer_kwargs, update):  # upkeep every round, as before
            observe(self, state, hidden, layer_kwargs, update)
            catch_up(self, state, self.num_depths)

        monkeypatch.setattr(decoding.ParallelDrafter, "observe", eager)
        per_round, stats = head_calls_per_round(model, ScriptedPlanner(3, script), ids, mask, 30)
        assert any(c > 0 for c, n in zip(per_round, stats["draft_tokens_per_round"]) if n == 0)


@pytest.mark.parametrize("family", FAMILIES)
def test_drafts_after_plain_rounds_are_those_of_a_fresh_decode(family, monkeypatch):
    """Runs of rounds drafting nothing, then 1..D drafts: output identical to `generate` (rows finishing at
    different times leave the batch), and each round's drafts equal those a fresh decode of the same committed tokens
    proposes, so the heads' catch-up over the skipped slots computes what drafting every round would. A catch-up that
    reads zeros for the plain rounds' slots fails."""
    torch.manual_seed(0)
    model = make_model(family, depths=3, perturb=0.3)
    ids, mask = random_batch(11, 5)
    free = reference(model, ids, mask, 24)[:, ids.size(1) :]
    script = [0, 0, 3, 0, 0, 0, 0, 1, 2, 0, 3, 3]
    stats = check_identity(model, ids, mask, 24, eos=int(free[2, 4]), adaptive_draft_tokens=ScriptedPlanner(3, script))
    assert set(stats["draft_tokens_per_round"]) == {0, 1, 2, 3}

    def mismatches():
        seen = drafts_by_prefix(model, ids[:2], mask[:2], 20, ScriptedPlanner(3, script), monkeypatch)
        wrong = 0
        for prefix, drafts in seen:
            fresh = drafts_by_prefix(model, torch.tensor([prefix[:-1]]), None, 2, True, monkeypatch)
            wrong += fresh[0][1][: len(drafts)] != drafts
        return wrong

    assert mismatches() == 0
    if family in ("parallel", "sequential"):
        drafter = decoding.DRAFTERS[family]
        observe, propose = decoding.WindowDrafter.observe, drafter.propose

        def skipped_zeroed(self, state, hidden, layer_kwargs, update):  # the catch-up reads zeros for the slots of a
            if self.slots.chunks and not getattr(self, "proposed", True):  # round the next one did not draft after
                self.slots.chunks[-1]["hidden"] = torch.zeros_like(self.slots.chunks[-1]["hidden"])
            self.proposed = False
            observe(self, state, hidden, layer_kwargs, update)

        def proposing(self, *args):
            self.proposed = True
            return propose(self, *args)

        monkeypatch.setattr(decoding.WindowDrafter, "observe", skipped_zeroed)
        monkeypatch.setattr(drafter, "propose", proposing)
        assert mismatches() > 0  # other drafts, computed without an error
