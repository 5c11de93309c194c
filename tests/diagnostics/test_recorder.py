"""`MTPRecorder`: the file format, bounded snapshots, overhead accounting; with SFT and with an RL trainer."""

from __future__ import annotations

import json

import numpy as np
import pytest
from small_runs import SMALL_RUN

from trl_mtp.diagnostics import MTPRecorder, make_probe_batch
from trl_mtp.embedded.tasks.registry import get_task


def read_records(run_dir):
    return [json.loads(line) for line in (run_dir / "diagnostics" / "records.jsonl").read_text().splitlines()]


def test_sft_run_writes_the_documented_files(recorded_run):
    run_dir, trainer, recorder = recorded_run
    diag = run_dir / "diagnostics"
    meta = json.loads((diag / "meta.json").read_text())
    assert meta["format"] == "trl-mtp-diagnostics" and meta["version"] == 1 and meta["num_depths"] == 2
    assert meta["head_type"] == "parallel" and len(meta["vocab"]["tokens"]) == meta["vocab_size"]
    records = read_records(run_dir)
    assert [r["step"] for r in records] == [0, 2, 4]  # step 0, every 2, the last one once
    last = records[-1]
    assert [s["depth"] for s in last["probe"]] == [0, 1, 2]
    for s in last["probe"]:
        assert s["n"] > 0 and 0 <= s["accuracy"] <= 1 and 0 <= s["ece"] <= 1
        assert sum(s["entropy_hist"]) == s["n"] and sum(s["calibration"]["count"]) == s["n"]
    assert all(-1 <= s["latent_cos"] <= 1 for s in last["probe"][1:])
    w = last["weights"]
    assert set(w["norm"]) == {"1", "2"} and set(w["update_norm"]) == {"1", "2"}
    assert all(w["update_norm"][d] > 0 for d in "12")  # the heads moved between records
    assert all(0.5 < w["cos_to_base_last_layer"][d] <= 1.0 + 1e-6 for d in "12")  # copies of the last layer
    assert len(last["decoding"]["acceptance_by_position"]) == 2
    assert "rollouts" not in last  # SFT samples nothing
    # snapshots: the first and the latest (keep_snapshots=2)
    assert sorted(p.name for p in (diag / "snapshots").iterdir()) == ["step_0000000.npz", "step_0000004.npz"]
    with np.load(diag / "snapshots" / last["snapshot"]) as snap:
        assert snap["probe_topk_ids"].shape[:2] == (3, 2) and snap["probe_topk_ids"].shape[-1] == 5
        assert {"attn__base.layer2", "attn__base.layer3", "attn__head1", "attn__head2"} <= set(snap.files)
        assert snap["attn__head1"].shape[0] == 4  # heads of the tiny Llama
    summary = json.loads((diag / "summary.json").read_text())
    assert summary["records"] == 3 and summary["recording_seconds"] > 0 and summary["overhead_fraction"] > 0
    history = json.loads((diag / "log_history.json").read_text())
    assert any("mtp/loss_depth_2" in h for h in history)
    # training attention is untouched: the capture switched to eager and back
    assert trainer.mtp_model.base_model.config._attn_implementation == "sdpa"


def test_record_decoding_appends_stats(tmp_path, recorded_run):
    _, _, recorder = recorded_run
    recorder.record_decoding({"acceptance_by_position": [0.5, 0.25], "mean_accepted_length": 1.7, "other": 1}, step=3)
    line = json.loads((recorder.out_dir / "decoding.jsonl").read_text().splitlines()[-1])
    assert line == {"step": 3, "source": "decoding", "acceptance_by_position": [0.5, 0.25], "mean_accepted_length": 1.7}


def test_grpo_rollouts_are_scored_by_every_head(tiny_model, tokenizer, tmp_path):
    from trl_mtp import MTPGRPOConfig, MTPGRPOTrainer

    task = get_task("copy", length=2, max_value=9)
    args = MTPGRPOConfig(
        **SMALL_RUN,
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=8,
        generation_batch_size=4,
        bf16=False,
    )
    trainer = MTPGRPOTrainer(
        tiny_model(), reward_funcs=task.reward, args=args, train_dataset=task.train(16), processing_class=tokenizer
    )
    recorder = MTPRecorder(
        trainer.mtp_model, make_probe_batch(tokenizer, task.eval(4)), every=1, decode_tokens=0, attention=False
    )
    trainer.add_callback(recorder)
    trainer.train()
    records = read_records(tmp_path)
    scored = [r for r in records if "rollouts" in r]
    assert scored, "no rollout was observed"
    assert [s["depth"] for s in scored[-1]["rollouts"]] == [0, 1, 2] and scored[-1]["rollouts"][0]["n"] > 0
    with np.load(tmp_path / "diagnostics" / "snapshots" / scored[-1]["snapshot"]) as snap:
        sampled = snap["rollout_input_ids"][:, int(snap["rollout_prompt_length"]) :]
        targets = snap["rollout_targets"][0]  # main head: its targets are the sampled tokens, shifted by one
        P = int(snap["rollout_prompt_length"])
        assert (
            targets[:, P - 1 : P - 1 + sampled.shape[1]][targets[:, P - 1 : P - 1 + sampled.shape[1]] != -100]
            == sampled[targets[:, P - 1 : P - 1 + sampled.shape[1]] != -100]
        ).all()
    assert "generate" not in vars(trainer.mtp_model.base_model)  # the observation hook is gone after training
    assert any("reward" in h for h in json.loads((tmp_path / "diagnostics" / "log_history.json").read_text()))


def test_bad_interval_is_refused(recorded_run):
    _, trainer, _ = recorded_run
    with pytest.raises(ValueError, match="every"):
        MTPRecorder(trainer.mtp_model, {}, every=0)
