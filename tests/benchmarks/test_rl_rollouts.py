"""`trl-mtp bench rl-rollouts`: each iteration runs and is timed under the setting the schedule gives it."""

from __future__ import annotations

import json
import types

import pytest

from trl_mtp.benchmarks import rl_rollouts


def test_each_iteration_runs_and_is_timed_under_its_setting(monkeypatch):
    """The trainers count `global_step` up between `on_step_begin` and `on_step_end`: an iteration's time, and its
    rollout's, belong to the setting it ran under (hand-computed below; attributing them by the step count at the
    end would give each to the next iteration's setting)."""
    # per iteration: start, rollout start, rollout end, end
    clock = iter([0.0, 0.1, 0.6, 1.0, 10.0, 10.5, 11.0, 12.0, 20.0, 20.5, 22.0, 23.0])
    monkeypatch.setattr(rl_rollouts.time, "perf_counter", lambda: next(clock))
    switch = rl_rollouts.SettingSwitch(["off", "on", "adaptive"])
    rollout = switch.timed(lambda: "completions")
    args = types.SimpleNamespace(speculative_rollouts=None, adaptive_draft_tokens=None)
    state = types.SimpleNamespace(global_step=0)
    flags = []
    for _ in range(3):
        switch.on_step_begin(args, state, None)
        flags.append((args.speculative_rollouts, args.adaptive_draft_tokens))
        assert rollout() == "completions"
        state.global_step += 1
        switch.on_step_end(args, state, None)
    assert flags == [(False, False), (True, False), (True, True)]
    assert switch.times == {"off": [1.0], "on": [2.0], "adaptive": [3.0]}
    assert {k: [round(t, 6) for t in v] for k, v in switch.rollout_times.items()} == {
        "off": [0.5],
        "on": [0.5],
        "adaptive": [1.5],
    }


@pytest.mark.parametrize(
    "argv, named",
    [(["--batch", "60"], "--batch=60"), (["--trainers", "ppo,dpo"], "dpo"), (["--repeats", "0"], "--repeats=0")],
)
def test_bad_settings_are_named(argv, named):
    with pytest.raises(ValueError, match=named):
        rl_rollouts.parse_args(argv)


@pytest.mark.slow
def test_quick_bench_runs(tmp_path, capsys):
    """Both trainers, every setting: speculative settings log `spec/*`, plain sampling does not, and every setting
    has its warm-up dropped and one time per repetition."""
    out = tmp_path / "rl.json"
    assert rl_rollouts.main(["--quick", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    for name in ("ppo", "grpo"):
        assert all(len(results[name]["seconds"][s]) == 2 for s in rl_rollouts.SETTINGS)
        assert "spec" not in results[name]["off"]
        assert results[name]["on"]["spec"]["spec/draft_tokens"] > 0  # adaptive may choose 0 (plain decoding)
        for setting in ("on", "adaptive"):
            assert "spec/acceptance_depth_1" in results[name][setting]["spec"]
            assert results[name][setting]["speedup_over_off"]["median"] > 0
    assert "speed-up" in capsys.readouterr().out
