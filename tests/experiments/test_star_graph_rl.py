"""RL from the star-graph regime's models: a short GRPO run from a tiny regime run, the start trained once per start
and seed, and a start that is not the regime's model refused before any RL."""

import json

import pytest

from trl_mtp.embedded.tasks import get_task
from trl_mtp.experiments import star_graph_rl
from trl_mtp.experiments.star_graph_rl import iterations_to, path_reward, run_star_graph_rl
from trl_mtp.experiments.star_graph_runs import run_star_graph

TASK = dict(degree=2, path_length=3, nodes=10)
MODEL = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
}
REGIME = dict(task=TASK, model=MODEL, steps=4, batch_size=4, eval_n=6)
GRPO = dict(steps=2, per_device_train_batch_size=4, num_generations=4, generation_batch_size=4, n_train=8)


def regime_run(regime_dir, variant: str, seed: int, **kwargs) -> dict:
    """A finished regime run as the runner leaves it: `run_args.json` and `result.json`."""
    run_dir = regime_dir / variant / f"seed{seed}"
    run_dir.mkdir(parents=True)
    kwargs = {**REGIME, **kwargs, "seed": seed}
    (run_dir / "run_args.json").write_text(
        json.dumps({"run": star_graph_rl.REGIME_RUN, "base": None, "kwargs": kwargs})
    )
    return run_star_graph(None, run_dir, **kwargs)


def test_path_reward_reads_the_decoded_nodes():
    task = get_task("star_graph", **TASK)
    problem = task.problems("eval", 1)[0]
    right = " ".join(problem.answer.split(","))
    wrong = " ".join(problem.answer.split(",")[::-1])
    assert path_reward(task)([problem.prompt] * 3, [right, f" {right} ", wrong]) == [1.0, 1.0, 0.0]


def test_iterations_to_threshold_is_the_first_window_at_it():
    rewards = [0.5, 0.5, 0.7, 0.8, 0.9, 0.2]
    assert iterations_to(rewards, 0.75, 2) == 4  # (0.7 + 0.8) / 2 = 0.75, the window ending at iteration 4
    assert iterations_to(rewards, 0.75, 1) == 4
    assert iterations_to(rewards, 0.95, 2) is None


@pytest.mark.parametrize("variant", [{"mtp_lambda": 0.0}, {"mode": "coupled", "mtp_lambda": 0.1}])
def test_grpo_from_the_regime_start(tmp_path, monkeypatch, variant):
    regime = regime_run(tmp_path / "regime", "MTP", 0, mtp={"head_type": "blockwise", "num_mtp_heads": 2})
    result = run_star_graph_rl(
        tmp_path / "regime",
        tmp_path / "rl",
        start="MTP",
        seed=0,
        starts_dir=str(tmp_path / "starts"),
        **GRPO,
        **variant,
    )
    assert result["start_agreement"] == 1.0
    assert result["accuracy_before"] == regime["accuracy"]
    assert len(result["scores"]) == 2 and len(result["correct"]) == 6
    assert result["mtp_config"]["head_type"] == "blockwise" and result["mtp_config"]["num_mtp_heads"] == 2  # kept
    assert result["mtp_config"]["mtp_lambda"] == variant["mtp_lambda"]
    # the start is trained once per start and seed: a second variant reads it back
    monkeypatch.setattr("trl_mtp.experiments.scratch_runs.train_rows", None)
    again = run_star_graph_rl(
        tmp_path / "regime", tmp_path / "rl2", start="MTP", seed=0, starts_dir=str(tmp_path / "starts"), **GRPO
    )
    assert again["accuracy_before"] == regime["accuracy"]


def test_a_start_trained_otherwise_is_refused(tmp_path):
    """The regime's run_args say seed 1 while its result is seed 0's: the retrained start is another model."""
    regime_run(tmp_path / "regime", "NTP", 0)
    run_dir = tmp_path / "regime" / "NTP" / "seed0"
    recorded = json.loads((run_dir / "run_args.json").read_text())
    recorded["kwargs"]["seed"] = 1
    (run_dir / "run_args.json").write_text(json.dumps(recorded))
    with pytest.raises(ValueError, match="first training losses .* not the regime's model"):
        run_star_graph_rl(tmp_path / "regime", tmp_path / "rl", start="NTP", seed=0, starts_dir=str(tmp_path), **GRPO)


def test_a_start_scoring_other_items_is_refused(tmp_path):
    """The regime's per-item scores are not the start's: the run stops before RL."""
    regime_run(tmp_path / "regime", "NTP", 0)
    result_file = tmp_path / "regime" / "NTP" / "seed0" / "result.json"
    result = json.loads(result_file.read_text())
    result["correct"] = [1 - c for c in result["correct"]]
    result_file.write_text(json.dumps(result))
    with pytest.raises(ValueError, match="agrees with the regime run on 0.000 .* not the regime's model"):
        run_star_graph_rl(tmp_path / "regime", tmp_path / "rl", start="NTP", seed=0, starts_dir=str(tmp_path), **GRPO)
    assert not (tmp_path / "rl" / "result.json").exists()


def test_a_missing_regime_run_is_named(tmp_path):
    with pytest.raises(ValueError, match="seed=3: .*NTP.*seed3 holds no finished regime run"):
        run_star_graph_rl(tmp_path, tmp_path / "rl", start="NTP", seed=3, starts_dir=str(tmp_path), **GRPO)
