"""World-model consistency: the estimator's sanity check (depth 0 is the policy itself), tables, the CLI output."""

from __future__ import annotations

import json

from trl_mtp.config import MTPConfig
from trl_mtp.diagnostics.consistency import consistency_probe, task_contexts
from trl_mtp.embedded.tasks.registry import get_task
from trl_mtp.model import MTPForCausalLM


def test_depth_zero_is_the_policy_and_tables_are_complete(tiny_model, tokenizer):
    model = MTPForCausalLM.from_base(tiny_model(), MTPConfig(head_type="sequential", num_mtp_heads=2))
    data = task_contexts(get_task("arithmetic"), tokenizer, 2, max_positions=2)
    calls = []

    def world_model(mtp_model, ids, mask):
        calls.append(ids.shape)
        return {1: 0.5, 2: 0.75}

    result = consistency_probe(
        model,
        data["contexts"],
        targets=data["targets"],
        positions=data["positions"],
        sequences=data["sequences"],
        n_samples=4,
        world_model=world_model,
    )
    by_depth = {e["depth"]: e for e in result["by_depth"]}
    assert set(by_depth) == {0, 1, 2} and by_depth[0]["n"] == len(data["contexts"])
    # pairs whose future lies past the answer's EOS are left out
    assert by_depth[2]["n"] == sum(len(t) > 2 for t in data["targets"])
    # p_0 is an average of N copies of the main head's own distribution: KL 0, full agreement
    assert abs(by_depth[0]["kl"]) < 1e-4 and by_depth[0]["agree"] == 1.0
    assert all(by_depth[d]["kl"] >= -1e-4 for d in (1, 2))
    assert all("head_correct" in e and len(e["kl_ci"]) == 2 for e in by_depth.values())
    assert {(e["depth"], e["position"]) for e in result["by_position"]} <= {(d, j) for d in range(3) for j in range(2)}
    assert [e["depth"] for e in result["latent"]] == [0, 1, 2]
    assert result["world_model"] == {"1": 0.5, "2": 0.75} and calls


def test_probe_cli_writes_consistency_json(recorded_run):
    run_dir, _, _ = recorded_run
    result = json.loads((run_dir / "diagnostics" / "consistency.json").read_text())
    assert result["settings"]["task"] == "arithmetic" and result["settings"]["n_samples"] == 8
    assert [e["depth"] for e in result["by_depth"]] == [0, 1, 2]


def test_probe_cli_rejects_a_missing_model(tmp_path, capsys):
    from trl_mtp import cli

    assert cli.main(["probe", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
