"""Our PPO and MTP-GRPO in 2 CPU processes (gloo) under FSDP2 and DeepSpeed ZeRO-2, launched with the example
configs, 2 iterations of a tiny Llama with 2 sequential heads (sharded_rl_run.py).

Each engine run must: keep lm_head tied to the input embedding, leave every rank with the same parameters (a
fingerprint of the full, gathered parameters), move them, and save a gathered checkpoint that
`MTPForCausalLM.from_pretrained` loads with the trained weights. A 1-process run cannot be compared: each process
samples its own rollouts from its own random stream, and one process sampling the global batch draws other tokens.
The 2-process DDP run samples exactly what the FSDP2 run samples (same seeds per rank, same prompts), so FSDP2 must
end where DDP ends (seen: equal to 1e-10 relative). ZeRO-2 runs coupled (the example config clips in the engine, on
one norm: decoupled mode is refused there) and clips on one global norm where DDP clips each group: not compared.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from two_process import fingerprint, launch

from trl_mtp import MTPForCausalLM

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "accelerate"
RUN = Path(__file__).with_name("sharded_rl_run.py")
DEEPSPEED_ON_CPU = {"DS_ACCELERATOR": "cpu", "ACCELERATE_USE_CPU": None}
PORTS = {("ppo", "ddp"): 29591, ("ppo", "fsdp2"): 29592, ("ppo", "zero2"): 29593}


def run(initial_model, out_dir, algorithm, engine, mode, *extra):
    port = PORTS[("ppo", engine)] + (10 if algorithm == "grpo" else 0) + (20 if extra else 0)
    config = {"ddp": {}, "fsdp2": {"config_file": EXAMPLES / "fsdp.yaml"}}.get(engine)
    if config is None:
        config = {"config_file": EXAMPLES / "deepspeed_zero2.yaml", "env": DEEPSPEED_ON_CPU}
    return launch(RUN, initial_model, str(out_dir), algorithm, engine, mode, *extra, port=port, **config)


def numbers(text: str) -> list[float]:
    return [float(x) for x in text.split(",")]


def assert_ranks_agree_moved_and_saved(reports, out_dir):
    assert all(r["tied"] == "True" for r in reports)  # lm_head is still the input embedding under the engine
    assert all(r["steps"] == "2" for r in reports)
    assert reports[0]["after"] == reports[1]["after"], reports  # every rank holds the same model
    assert numbers(reports[0]["after"]) != pytest.approx(numbers(reports[0]["before"]), rel=1e-6)
    saved = fingerprint(MTPForCausalLM.from_pretrained(str(out_dir)))  # the gathered checkpoint, heads included
    assert numbers(saved) == pytest.approx(numbers(reports[0]["policy"]), rel=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_fsdp2_rl_matches_ddp(tmp_path, initial_model, algorithm):
    """FSDP2, decoupled (the RL default; each group clipped on its full norm), against DDP sampling the same."""
    reports = run(initial_model, tmp_path / "fsdp2", algorithm, "fsdp2", "decoupled")
    assert {r["mode"] for r in reports} == {"FSDP"}  # accelerate's FSDP2 path, not the MULTI_CPU fallback
    assert_ranks_agree_moved_and_saved(reports, tmp_path / "fsdp2")
    reference = run(initial_model, tmp_path / "ddp", algorithm, "ddp", "decoupled")
    assert reports[0]["mtp_loss"] == reference[0]["mtp_loss"]  # the same rollouts at the first step
    assert numbers(reports[0]["after"]) == pytest.approx(numbers(reference[0]["after"]), rel=1e-8)


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_zero2_rl_runs_and_ranks_agree(tmp_path, initial_model, algorithm):
    pytest.importorskip("deepspeed")  # the `.[deepspeed]` extra
    reports = run(initial_model, tmp_path, algorithm, "zero2", "coupled")
    assert {r["mode"] for r in reports} == {"DEEPSPEED"}
    assert_ranks_agree_moved_and_saved(reports, tmp_path)


@pytest.mark.slow
def test_ppo_sampling_needs_the_fsdp2_roots_parameters(tmp_path, initial_model):
    """PPO samples with `generate`, outside the root module's forward, and under FSDP2 only the root's forward
    gathers the parameters it holds (embeddings, final norm, LM head): the trainer registers `generate` as a forward
    method. Without that registration the first rollout fails (DTensor shards mixed with plain tensors)."""
    with pytest.raises(AssertionError, match="DTensor"):
        run(initial_model, tmp_path, "ppo", "fsdp2", "decoupled", "no-unshard")


def test_policy_and_value_reties_the_lm_head(tiny_model):
    """accelerate's FSDP2 loading rebuilds the root's parameters from a state dict and re-ties shared ones only
    through the root's `tie_weights`; PPO's root is `PolicyAndValue`, which must pass it on to the policy."""
    import torch

    from trl_mtp.heads import Trunk
    from trl_mtp.trainers.ppo_models import PolicyAndValue

    policy = tiny_model()
    root = PolicyAndValue(policy, Trunk(policy))
    policy.lm_head.weight = torch.nn.Parameter(policy.lm_head.weight.detach().clone())  # untied, as after loading
    root.tie_weights()
    assert policy.get_output_embeddings().weight is policy.get_input_embeddings().weight
