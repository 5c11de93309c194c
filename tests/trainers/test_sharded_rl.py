"""Our PPO and MTP-GRPO in 2 CPU processes (gloo) under FSDP2 and DeepSpeed ZeRO-2 / ZeRO-3, launched with the example
configs, 2 iterations of a tiny Llama with 2 sequential heads (sharded_rl_run.py).

Each engine run must: keep lm_head tied to the input embedding, leave every rank with the same parameters (a
fingerprint of the full, gathered parameters), move them, and save a gathered checkpoint that
`MTPForCausalLM.from_pretrained` loads with the trained weights. A 1-process run cannot be compared: each process
samples its own rollouts from its own random stream, and one process sampling the global batch draws other tokens.
The 2-process DDP run samples exactly what the FSDP2 run samples (same seeds per rank, same prompts), so FSDP2 must
end where DDP ends (seen: equal to 1e-10 relative). ZeRO-2 and ZeRO-3 run coupled (the example configs clip in the
engine, on one norm: decoupled mode is refused there) and clip on one global norm where DDP clips each group: not
compared.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from two_process import EXAMPLES, TWO_PROCESS_GROUP, fingerprint, launch, zero2_config_without_clipping

from trl_mtp import MTPForCausalLM

pytestmark = pytest.mark.xdist_group(TWO_PROCESS_GROUP)  # one after another on one xdist worker

RUN = Path(__file__).with_name("sharded_rl_run.py")
DEEPSPEED_ON_CPU = {"DS_ACCELERATOR": "cpu", "ACCELERATE_USE_CPU": None}
PORTS = {("ppo", "ddp"): 29591, ("ppo", "fsdp2"): 29592, ("ppo", "zero2"): 29593, ("ppo", "zero3"): 29594}


def run(initial_model, out_dir, algorithm, engine, mode, *extra, config_file=None, port_offset=0):
    """`config_file`: an accelerate config in place of the example's."""
    port = PORTS[("ppo", engine)] + {"ppo": 0, "wm-ppo": 5, "grpo": 10}[algorithm] + (20 if extra else 0) + port_offset
    config = {"ddp": {}, "fsdp2": {"config_file": config_file or EXAMPLES / "fsdp.yaml"}}.get(engine)
    if config is None:  # zero2 | zero3
        config = {"config_file": config_file or EXAMPLES / f"deepspeed_{engine}.yaml", "env": DEEPSPEED_ON_CPU}
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
@pytest.mark.parametrize("algorithm", ["ppo", "wm-ppo", "grpo"])
def test_fsdp2_rl_matches_ddp(tmp_path, initial_model, algorithm):
    """FSDP2, decoupled (the RL default; each group clipped on its full norm), against DDP sampling the same.
    World-model PPO (`wm-ppo`) runs with `fsdp_cpu_ram_efficient_loading: false`: with it on, accelerate's loading
    takes every state-dict entry for a sharded parameter, and the world model's persistent counter buffer is not
    one (`'Tensor' object has no attribute 'device_mesh'`). Its `world_model.safetensors` must hold the gathered full
    tensors, equal to the DDP run's (it was written from the modules' own shards, and failed)."""
    config_file = None
    if algorithm == "wm-ppo":
        config_file = tmp_path / "fsdp_without_ram_efficient_loading.yaml"
        example = (EXAMPLES / "fsdp.yaml").read_text()
        assert "fsdp_cpu_ram_efficient_loading: true" in example
        config_file.write_text(example.replace("efficient_loading: true", "efficient_loading: false"))
    reports = run(initial_model, tmp_path / "fsdp2", algorithm, "fsdp2", "decoupled", config_file=config_file)
    assert {r["mode"] for r in reports} == {"FSDP"}  # accelerate's FSDP2 path, not the MULTI_CPU fallback
    assert_ranks_agree_moved_and_saved(reports, tmp_path / "fsdp2")
    reference = run(initial_model, tmp_path / "ddp", algorithm, "ddp", "decoupled")
    assert reports[0]["mtp_loss"] == reference[0]["mtp_loss"]  # the same rollouts at the first step
    assert numbers(reports[0]["after"]) == pytest.approx(numbers(reference[0]["after"]), rel=1e-8)
    if algorithm == "wm-ppo":
        from safetensors.torch import load_file

        got, want = (load_file(str(tmp_path / d / "world_model.safetensors")) for d in ("fsdp2", "ddp"))
        assert got.keys() == want.keys()
        worst = max((got[k].double() - want[k].double()).abs().max().item() for k in want)
        assert worst < 1e-5, worst
        print("world-model PPO, FSDP2 vs DDP world model, max |diff|:", worst)


def assert_deepspeed_holds_the_heads(reports, engine):
    assert {r["mode"] for r in reports} == {"DEEPSPEED"}
    assert [r["eh_proj_full"] for r in reports] == ["128x256"] * 2
    # ZeRO-3 partitions the parameters: each rank holds a flat half of eh_proj (128*256/2); ZeRO-2 holds them full
    assert [r["eh_proj"] for r in reports] == ["16384" if engine == "zero3" else "128x256"] * 2


@pytest.mark.slow
@pytest.mark.parametrize(
    ("algorithm", "engine"),
    # MTP-GRPO under ZeRO-3 runs in test_zero3_grpo_with_a_reference_model: the same run with a KL reference added
    [("ppo", "zero2"), ("ppo", "zero3"), ("grpo", "zero2")],
)
def test_zero_rl_runs_and_ranks_agree(tmp_path, initial_model, algorithm, engine):
    pytest.importorskip("deepspeed")  # the `.[deepspeed]` extra
    reports = run(initial_model, tmp_path, algorithm, engine, "coupled")
    assert_deepspeed_holds_the_heads(reports, engine)
    assert_ranks_agree_moved_and_saved(reports, tmp_path)


@pytest.mark.slow
def test_zero2_decoupled_ppo_leaves_the_policy_update_as_without_the_mtp_loss(tmp_path, initial_model):
    """Our PPO, decoupled, under ZeRO-2 with the engine's clipping off (`gradient_clipping: 0`, max_grad_norm 0): the
    policy without its heads ends where the run with the MTP loss off (mtp_lambda 0) ends (the same rollouts: the
    policy samples them, with the same seeds), while the heads learn; the coupled run ends elsewhere."""
    pytest.importorskip("deepspeed")
    config = zero2_config_without_clipping(tmp_path)
    variants = [("without", "decoupled", ["lambda0"]), ("decoupled", "decoupled", []), ("coupled", "coupled", [])]
    runs = {
        name: run(
            initial_model,
            tmp_path / name,
            "ppo",
            "zero2",
            mode,
            "no-clip",
            *flags,
            config_file=config,
            port_offset=offset,
        )[0]
        for offset, (name, mode, flags) in enumerate(variants)
    }
    trunk = {name: numbers(report["trunk"]) for name, report in runs.items()}
    print("ZeRO-2 PPO trunk fingerprints:", trunk)
    assert trunk["decoupled"] == pytest.approx(trunk["without"], rel=1e-6)
    assert numbers(runs["decoupled"]["policy"]) != pytest.approx(numbers(runs["without"]["policy"]), rel=1e-6)
    assert trunk["coupled"] != pytest.approx(trunk["without"], rel=1e-6)


@pytest.mark.slow
def test_zero3_grpo_with_a_reference_model(tmp_path, initial_model):
    """MTP-GRPO with a KL reference (beta > 0) under ZeRO-3: TRL loads the reference (partitioned on load, like the
    policy) and runs it as its own ZeRO-3 inference engine (`prepare_deepspeed`), which gathers its partitions around
    each call. The run trains, ranks agree, the checkpoint loads, and the KL to the reference is logged: 0 at the
    first step (policy = reference), above 0 once the policy moved. Left out of the engine, the reference's weights
    stay empty partitions and its first pass fails ("'weight' must be 2-D").

    This is also MTP-GRPO's ZeRO-3 run of test_zero_rl_runs_and_ranks_agree (the heads partitioned, ranks agree, the
    checkpoint loads): the reference only adds a second engine beside the policy's, so a separate run without it
    would train the same policy through the same engine."""
    pytest.importorskip("deepspeed")
    reports = run(initial_model, tmp_path / "beta", "grpo", "zero3", "coupled", "beta")
    assert_deepspeed_holds_the_heads(reports, "zero3")
    assert_ranks_agree_moved_and_saved(reports, tmp_path / "beta")
    kl = numbers(reports[0]["kl"])
    assert len(kl) == 2 and kl[0] == pytest.approx(0.0, abs=1e-6) and kl[1] > 0, kl
    assert reports[0]["kl"] == reports[1]["kl"]
    with pytest.raises(AssertionError, match="must be 2-D"):  # the reference's first pass, on empty partitions
        run(initial_model, tmp_path / "broken", "grpo", "zero3", "coupled", "no-ref-engine")


@pytest.mark.slow
def test_zero3_ppo_reference_is_copied_from_the_gathered_parameters(tmp_path, initial_model):
    """Under ZeRO-3 the loaded base holds empty partitions: PPO's frozen KL reference (a copy of the initial policy,
    outside the engine, which never gathers it) must be copied from the gathered parameters. Copied without the
    gathering, its weights are empty tensors and the first reference pass fails."""
    pytest.importorskip("deepspeed")
    with pytest.raises(AssertionError, match="must be 2-D"):
        run(initial_model, tmp_path, "ppo", "zero3", "coupled", "no-gather")


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
