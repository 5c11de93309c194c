"""MTP-SFT in 2 CPU processes (gloo) under the sharded engines, launched as users launch them (an accelerate config
from examples/accelerate/ + the Trainer), against a 1-process run with the same global batch (2 x 2 = 1 x 4).

Each engine run must: shard the heads' parameters (every rank reports its local shapes), keep lm_head tied to the
input embedding, save a gathered checkpoint that `MTPForCausalLM.from_pretrained` loads, and end equal to the
1-process run: logged losses within 1e-4, every weight within 1e-4 (seen: FSDP2 2.4e-6 after 3 Adam steps at lr 1e-3;
the difference is float summation order across ranks).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from two_process import launch, run_one

from trl_mtp import MTPForCausalLM

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "accelerate"
RUN = Path(__file__).with_name("sharded_sft_run.py")
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The reference: the same run in 1 process, per-device batch 4 (= 2 processes x 2)."""
    out = tmp_path_factory.mktemp("one_process")
    return run_one(RUN, str(out), "none", "4"), MTPForCausalLM.from_pretrained(str(out))


def assert_equal_to_one_process(reports, out_dir, one_process):
    reference, reference_model = one_process
    for report in reports:  # every rank logged the all-reduced losses of the 1-process run
        got = [float(x) for x in report["losses"].split(",")]
        want = [float(x) for x in reference["losses"].split(",")]
        assert got == pytest.approx(want, abs=TOLERANCE), (got, want)
        assert report["tied"] == "True"  # lm_head is still the input embedding under the engine
    model = MTPForCausalLM.from_pretrained(str(out_dir))  # the gathered checkpoint loads
    assert model.base_model.get_output_embeddings().weight is model.base_model.get_input_embeddings().weight
    got, want = model.state_dict(), reference_model.state_dict()
    assert got.keys() == want.keys()
    worst = max((got[k] - want[k]).abs().max().item() for k in want)
    assert worst < TOLERANCE, worst
    return worst


@pytest.mark.slow
def test_fsdp2_sft_shards_the_heads_and_matches_one_process(tmp_path, tokenizer, one_process):
    reports = launch(RUN, str(tmp_path), "fsdp2", "2", port=29581, config_file=EXAMPLES / "fsdp.yaml")
    assert {r["mode"] for r in reports} == {"FSDP"}  # accelerate's FSDP2 path, not the MULTI_CPU fallback
    # fully_shard splits dim 0 across the 2 ranks: eh_proj [128, 256] and the head block's q_proj [128, 128]
    assert [(r["eh_proj"], r["q_proj"]) for r in reports] == [("64x256", "64x128")] * 2
    print("FSDP2 weights vs 1 process, max |diff|:", assert_equal_to_one_process(reports, tmp_path, one_process))


@pytest.mark.slow
@pytest.mark.parametrize(
    "stage",
    [
        2,
        pytest.param(
            3,
            marks=pytest.mark.xfail(
                strict=True,
                reason=(
                    "not supported yet: the heads run after the engine's forward, and ZeRO-3's parameter coordinator asserts on "
                    "their first fetch (a parameter NOT_AVAILABLE); seen with deepspeed 0.19.8"
                ),
            ),
        ),
    ],
)
def test_deepspeed_zero_sft_matches_one_process(tmp_path, tokenizer, one_process, stage):
    pytest.importorskip("deepspeed")  # the `.[deepspeed]` extra
    # DeepSpeed on CPU: its CPU accelerator, and accelerate's DeepSpeed path, which `use_cpu` would turn off
    env = {"DS_ACCELERATOR": "cpu", "ACCELERATE_USE_CPU": None}
    reports = launch(
        RUN,
        str(tmp_path),
        f"zero{stage}",
        "2",
        port=29582 + stage,
        env=env,
        config_file=EXAMPLES / f"deepspeed_zero{stage}.yaml",
    )
    assert {r["mode"] for r in reports} == {"DEEPSPEED"}
    if stage == 3:  # parameters partitioned: each rank holds a flat half (128*256/2, 128*128/2)
        assert [(r["eh_proj"], r["q_proj"]) for r in reports] == [("16384", "8192")] * 2
    else:  # ZeRO-2 partitions gradients and optimizer state; every rank holds the full parameters
        assert [(r["eh_proj"], r["q_proj"]) for r in reports] == [("128x256", "128x128")] * 2
    worst = assert_equal_to_one_process(reports, tmp_path, one_process)
    print(f"ZeRO-{stage} weights vs 1 process, max |diff|:", worst)


def test_save_takes_the_heads_from_the_gathered_state_dict(tmp_path, tokenizer):
    """Under FSDP2 / ZeRO-3 the head modules hold only this rank's shard; the Trainer passes the gathered full
    state dict to `_save`, and the heads file must be written from it (writing the modules' own tensors saved shards,
    or failed on FSDP2's DTensors)."""
    from trl_mtp import MTPSFTConfig, MTPSFTTrainer
    from trl_mtp.embedded.presets import build_model
    from trl_mtp.embedded.tasks.registry import get_task

    args = MTPSFTConfig(
        output_dir=str(tmp_path / "run"),
        report_to=[],
        use_cpu=True,
        num_mtp_heads=1,
        head_type="sequential",
        activation_checkpointing=False,
    )
    trainer = MTPSFTTrainer(
        build_model("tiny-llama", len(tokenizer), tokenizer=tokenizer, num_hidden_layers=1),
        args,
        train_dataset=get_task("arithmetic").train(4),
        processing_class=tokenizer,
    )
    gathered = {k: v + 1 if k.startswith("mtp_heads.") else v for k, v in trainer.model.state_dict().items()}
    trainer._save(str(tmp_path / "saved"), state_dict=gathered)
    saved = MTPForCausalLM.from_pretrained(str(tmp_path / "saved")).heads.state_dict()
    for key, value in trainer.mtp_model.heads.state_dict().items():
        torch.testing.assert_close(saved[key], value + 1)


@pytest.mark.slow
def test_fsdp2_decoupled_clipping_uses_each_groups_full_norm(tmp_path, tokenizer):
    """Decoupled mode clips the heads and the policy on their own norms. Under FSDP2 each rank holds half of every
    gradient: a group's norm must be the norm of the whole gradient (torch reduces the squared local sums across
    ranks), else each rank would clip its shard by a different factor. With max_grad_norm=0.05 every step clips
    (the logged norms are ~1-10), so the run equals the 1-process run only if the group norms are the full ones."""
    reference = run_one(RUN, str(tmp_path / "one"), "none", "4", "decoupled", "0.05")
    reports = launch(
        RUN, str(tmp_path / "two"), "fsdp2", "2", "decoupled", "0.05", port=29586, config_file=EXAMPLES / "fsdp.yaml"
    )
    assert min(float(x) for x in reference["norms"].split(",")) > 0.5  # clipping is active on every step
    worst = assert_equal_to_one_process(
        reports, tmp_path / "two", (reference, MTPForCausalLM.from_pretrained(str(tmp_path / "one")))
    )
    for report in reports:
        got, want = ([float(x) for x in r["norms"].split(",")] for r in (report, reference))
        assert got == pytest.approx(want, rel=1e-4)
    print("FSDP2 decoupled, weights vs 1 process, max |diff|:", worst)
    # clipping each rank's shard on its own norm (the mistake this guards against) ends elsewhere
    broken = launch(
        RUN,
        str(tmp_path / "broken"),
        "fsdp2",
        "2",
        "decoupled",
        "0.05",
        "local-norms",
        port=29587,
        config_file=EXAMPLES / "fsdp.yaml",
    )
    with pytest.raises(AssertionError):
        assert_equal_to_one_process(
            broken, tmp_path / "broken", (reference, MTPForCausalLM.from_pretrained(str(tmp_path / "one")))
        )


def test_decoupled_mode_is_refused_where_deepspeed_clips():
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from trl_mtp.trainers.mtp_mixin import MTPTrainerMixin

    def trainer(mode, clipping, max_grad_norm=1.0, engine=DistributedType.DEEPSPEED):
        plugin = SimpleNamespace(deepspeed_config={"gradient_clipping": clipping})
        accelerator = SimpleNamespace(distributed_type=engine, state=SimpleNamespace(deepspeed_plugin=plugin))
        return SimpleNamespace(args=SimpleNamespace(mode=mode, max_grad_norm=max_grad_norm), accelerator=accelerator)

    for clipping in (1.0, "auto"):
        with pytest.raises(ValueError, match="mode='decoupled' with DeepSpeed gradient_clipping=1.0"):
            MTPTrainerMixin._refuse_engine_clipping(trainer("decoupled", clipping))
    # allowed: no clipping, coupled mode, or another engine
    MTPTrainerMixin._refuse_engine_clipping(trainer("decoupled", "auto", max_grad_norm=0.0))
    MTPTrainerMixin._refuse_engine_clipping(trainer("decoupled", 0.0))
    MTPTrainerMixin._refuse_engine_clipping(trainer("coupled", 1.0))
    MTPTrainerMixin._refuse_engine_clipping(trainer("decoupled", 1.0, engine=DistributedType.FSDP))
