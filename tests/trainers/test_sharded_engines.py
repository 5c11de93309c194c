"""MTP-SFT in 2 CPU processes (gloo) under the sharded engines, launched as users launch them (an accelerate config
from examples/accelerate/ + the Trainer), against a 1-process run with the same global batch (2 x 2 = 1 x 4).

Every run loads the same initial model from a folder (as users load a checkpoint; under ZeRO-3 transformers partitions
it on load, before the heads copy its last layer). Each engine run must: shard the heads' parameters (every rank
reports its local part and the full size), keep lm_head tied to the input embedding, save a gathered checkpoint that
`MTPForCausalLM.from_pretrained` loads, and end equal to the 1-process run: logged losses within 1e-4, every weight
within 1e-4 (seen: FSDP2 and ZeRO-2 5.1e-6, ZeRO-3 3.5e-6 after 4 Adam steps at lr 1e-3; the difference is float
summation order across ranks).

A 2-process launch takes 12-18 s in CI (2 cores), so one launch checks all it can: the per-engine run is both the
1-process comparison and the uninterrupted run its resume is compared with.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from two_process import EXAMPLES, TWO_PROCESS_GROUP, launch, run_one, zero2_config_without_clipping

from trl_mtp import MTPForCausalLM

pytestmark = pytest.mark.xdist_group(TWO_PROCESS_GROUP)  # one after another on one xdist worker

RUN = Path(__file__).with_name("sharded_sft_run.py")
TOLERANCE = 1e-4


def run_one_process(initial_model, out_dir, *args):
    """The reference: the same run in 1 process, per-device batch 4 (= 2 processes x 2); `args` after the batch size.
    Returns its report and the model it saved."""
    return run_one(RUN, initial_model, str(out_dir), "none", "4", *args), MTPForCausalLM.from_pretrained(str(out_dir))


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, initial_model):
    """The reference of test_sft_matches_one_process_and_resumes: 4 steps, a checkpoint every 2 (as its 2-process
    runs)."""
    return run_one_process(initial_model, tmp_path_factory.mktemp("one_process"), "coupled", "1.0", "checkpointed")


@pytest.fixture(scope="module")
def one_process_lora(tmp_path_factory, initial_model):
    """The LoRA runs' reference, shared by the engines."""
    pytest.importorskip("peft")
    return run_one_process(initial_model, tmp_path_factory.mktemp("one_process_lora"), "coupled", "1.0", "lora")


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


def launch_fsdp2(initial_model, out_dir, *args, port):
    """The run in 2 processes with the FSDP2 example config; `args` after the per-device batch size (2)."""
    return launch(RUN, initial_model, str(out_dir), "fsdp2", "2", *args, port=port, config_file=EXAMPLES / "fsdp.yaml")


# DeepSpeed on CPU: its CPU accelerator, and accelerate's DeepSpeed path, which `use_cpu` would turn off
DEEPSPEED_ON_CPU = {"DS_ACCELERATOR": "cpu", "ACCELERATE_USE_CPU": None}


def launch_deepspeed(initial_model, out_dir, stage, *extra, port, config_file=None):
    """The run in 2 processes under ZeRO-`stage`, with the example config unless `config_file` is given."""
    return launch(
        RUN,
        initial_model,
        str(out_dir),
        f"zero{stage}",
        "2",
        *extra,
        port=port,
        env=DEEPSPEED_ON_CPU,
        config_file=config_file or EXAMPLES / f"deepspeed_zero{stage}.yaml",
    )


def launch_engine(engine, initial_model, out_dir, *args, port):
    """The run in 2 processes under `engine` (fsdp2 | zero2 | zero3) with its example config; `args` after the
    per-device batch size (2)."""
    if engine == "fsdp2":
        return launch_fsdp2(initial_model, out_dir, *args, port=port)
    pytest.importorskip("deepspeed")
    return launch_deepspeed(initial_model, out_dir, int(engine[-1]), *args, port=port)


# what each engine holds on each rank of the first head's eh_proj [128, 256] and its block's q_proj [128, 128]
LOCAL_SHAPES = {
    "fsdp2": ("64x256", "64x128"),  # fully_shard splits dim 0 across the 2 ranks (DTensor shards)
    "zero2": ("128x256", "128x128"),  # ZeRO-2 partitions gradients and optimizer state; parameters stay whole
    "zero3": ("16384", "8192"),  # ZeRO-3 partitions parameters: a flat half each (ds_tensor)
}


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["fsdp2", "zero2", "zero3"])
def test_sft_matches_one_process_and_resumes(tmp_path, initial_model, one_process, engine):
    """MTP-SFT under each engine, 4 steps with a checkpoint every 2, launched with the example config: accelerate
    takes the engine's path (not the MULTI_CPU fallback), the heads are sharded as the engine shards (LOCAL_SHAPES),
    and the run equals the 1-process run (module docstring).

    Resume: the run resumed from its step-2 checkpoint ends where the uninterrupted run ends: the same 4 losses, the
    same weights, heads included. FSDP2 resumes from its own checkpoint (the gathered module tree and the sharded
    optimizer state); DeepSpeed from its engine checkpoint (`global_step*/`: the module's state, heads included, and
    each rank's optimizer partition, which holds the fp32 master weights). The checkpoint is the uninterrupted run's
    own `checkpoint-2`, alone in a fresh output folder: a run stopped right after that save holds the same files (the
    Trainer saves before its callbacks can stop it); stopping a run is tested on the CLI (tests/test_cli_interrupt.py).
    The check's sanity run, a resume without the optimizer state, runs under FSDP2 (the Trainer's optimizer loading)
    and ZeRO-3 (DeepSpeed's `load_checkpoint`); ZeRO-2 restores through that same DeepSpeed call, so a third one would
    prove nothing new."""
    port = {"fsdp2": 29595, "zero2": 29610, "zero3": 29614}[engine]

    def run(out_dir, flag, port):
        return launch_engine(engine, initial_model, tmp_path / out_dir, "coupled", "1.0", flag, port=port)

    def assert_equal(reports, out_dir):
        assert reports[0]["losses"] == whole[0]["losses"] and len(whole[0]["losses"].split(",")) == 4
        final, reference = (MTPForCausalLM.from_pretrained(str(tmp_path / d)).state_dict() for d in (out_dir, "whole"))
        assert any(k.startswith("heads.") for k in reference)  # the heads are compared too
        worst = max((final[k] - reference[k]).abs().max().item() for k in reference)
        assert worst < 1e-6, worst
        return worst

    def stopped_after_step_2(out_dir):
        shutil.copytree(tmp_path / "whole" / "checkpoint-2", tmp_path / out_dir / "checkpoint-2")

    whole = run("whole", "checkpointed", port)
    assert {r["mode"] for r in whole} == {"FSDP" if engine == "fsdp2" else "DEEPSPEED"}
    assert [(r["eh_proj_full"], r["q_proj_full"]) for r in whole] == [("128x256", "128x128")] * 2
    assert [(r["eh_proj"], r["q_proj"]) for r in whole] == [LOCAL_SHAPES[engine]] * 2
    print(
        f"{engine} weights vs 1 process, max |diff|:",
        assert_equal_to_one_process(whole, tmp_path / "whole", one_process),
    )
    stopped_after_step_2("resumed")
    worst = assert_equal(run("resumed", "resume", port + 1), "resumed")
    print(f"{engine} resumed vs uninterrupted, max |diff|:", worst)
    if engine == "zero2":
        return
    # the check sees a resume that loses part of the state (here the optimizer's: a fresh Adam at step 2; under
    # DeepSpeed also its fp32 master weights)
    stopped_after_step_2("broken")
    broken = run("broken", "resume-fresh-optimizer", port + 2)
    with pytest.raises(AssertionError):
        assert_equal(broken, "broken")


@pytest.mark.slow
def test_zero3_heads_are_built_from_the_gathered_trunk(tmp_path, initial_model):
    """Under ZeRO-3 the loaded base holds empty partitions; heads copied from them without gathering start as empty
    tensors, and the run dies on its first step (the sanity check of the test above: it needs the gathering)."""
    pytest.importorskip("deepspeed")
    with pytest.raises(AssertionError):
        launch_deepspeed(initial_model, tmp_path, 3, "coupled", "1.0", "no-gather", port=29588)


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
def test_fsdp2_decoupled_clipping_uses_each_groups_full_norm(tmp_path, initial_model):
    """Decoupled mode clips the heads and the policy on their own norms. Under FSDP2 each rank holds half of every
    gradient: a group's norm must be the norm of the whole gradient (torch reduces the squared local sums across
    ranks), else each rank would clip its shard by a different factor. With max_grad_norm=0.05 every step clips
    (the logged norms are ~1-10), so the run equals the 1-process run only if the group norms are the full ones."""
    one_process = run_one_process(initial_model, tmp_path / "one", "decoupled", "0.05")
    reference = one_process[0]
    reports = launch_fsdp2(initial_model, tmp_path / "two", "decoupled", "0.05", port=29586)
    assert min(float(x) for x in reference["norms"].split(",")) > 0.5  # clipping is active on every step
    worst = assert_equal_to_one_process(reports, tmp_path / "two", one_process)
    for report in reports:
        got, want = ([float(x) for x in r["norms"].split(",")] for r in (report, reference))
        assert got == pytest.approx(want, rel=1e-4)
    print("FSDP2 decoupled, weights vs 1 process, max |diff|:", worst)
    # clipping each rank's shard on its own norm (the mistake this guards against) ends elsewhere
    broken = launch_fsdp2(initial_model, tmp_path / "broken", "decoupled", "0.05", "local-norms", port=29587)
    with pytest.raises(AssertionError):
        assert_equal_to_one_process(broken, tmp_path / "broken", one_process)


@pytest.mark.slow
def test_zero2_decoupled_leaves_the_policy_update_as_without_the_mtp_loss(tmp_path, initial_model):
    """Decoupled mode's guarantee under ZeRO-2 with the engine's clipping off (`gradient_clipping: 0`, max_grad_norm 0;
    with clipping on it is refused, below): the MTP loss trains the heads only, so the policy (trunk, embeddings,
    LM head) ends where a run without the MTP loss (mtp_lambda 0) ends, while the heads learn. Coupled mode, where
    the MTP loss trains the trunk too, ends elsewhere (the check can fail)."""
    pytest.importorskip("deepspeed")
    config = zero2_config_without_clipping(tmp_path)

    def run(name, mode, *flags, port):
        launch_deepspeed(initial_model, tmp_path / name, 2, mode, "0", *flags, port=port, config_file=config)
        return MTPForCausalLM.from_pretrained(str(tmp_path / name)).state_dict()

    def worst(a, b, policy=True):
        return max((a[k] - b[k]).abs().max().item() for k in b if k.startswith("base_model.") == policy)

    without = run("without", "decoupled", "lambda0", port=29640)
    decoupled = run("decoupled", "decoupled", port=29641)
    coupled = run("coupled", "coupled", port=29642)
    print("ZeRO-2 decoupled vs without the MTP loss, policy max |diff|:", worst(decoupled, without))
    assert worst(decoupled, without) < 1e-5
    assert worst(decoupled, without, policy=False) > 1e-4  # the heads did learn from the MTP loss
    assert worst(coupled, without) > 1e-3  # seen: 3.9e-3


def test_deepspeed_refuses_decoupled_mode_where_it_clips_or_under_zero3_and_a_frozen_lm_head_under_zero3():
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from trl_mtp.trainers.mtp_mixin import MTPTrainerMixin

    def trainer(mode, clipping, max_grad_norm=1.0, engine=DistributedType.DEEPSPEED, stage=2, alarm=None, frozen=False):
        config = {"gradient_clipping": clipping, "zero_optimization": {"stage": stage}}
        plugin = SimpleNamespace(deepspeed_config=config)
        accelerator = SimpleNamespace(distributed_type=engine, state=SimpleNamespace(deepspeed_plugin=plugin))
        args = SimpleNamespace(mode=mode, max_grad_norm=max_grad_norm, mtp_alarms=alarm is not None, alarm_action=alarm)
        lm_head = torch.nn.Linear(2, 2, bias=False).requires_grad_(not frozen)
        mtp_model = SimpleNamespace(trunk=SimpleNamespace(lm_head=lm_head))
        return SimpleNamespace(args=args, accelerator=accelerator, mtp_model=mtp_model)

    for clipping in (1.0, "auto"):
        with pytest.raises(ValueError, match="mode='decoupled' with DeepSpeed gradient_clipping=1.0"):
            MTPTrainerMixin._refuse_unsupported_engine_modes(trainer("decoupled", clipping))
    # allowed: no clipping, coupled mode, or another engine
    MTPTrainerMixin._refuse_unsupported_engine_modes(trainer("decoupled", "auto", max_grad_norm=0.0))
    MTPTrainerMixin._refuse_unsupported_engine_modes(trainer("decoupled", 0.0))
    MTPTrainerMixin._refuse_unsupported_engine_modes(trainer("coupled", 1.0))
    MTPTrainerMixin._refuse_unsupported_engine_modes(trainer("decoupled", 1.0, engine=DistributedType.FSDP))
    # ZeRO-3 in decoupled mode, whatever the clipping (its hooks cannot gather the detached LM head's parameters)
    with pytest.raises(ValueError, match="mode='decoupled' with DeepSpeed ZeRO-3"):
        MTPTrainerMixin._refuse_unsupported_engine_modes(trainer("decoupled", 0.0, stage=3))
    MTPTrainerMixin._refuse_unsupported_engine_modes(trainer("coupled", 0.0, stage=3))
    # an alarm response that switches to decoupled mode mid-run is refused alike
    with pytest.raises(ValueError, match="alarm_action='decouple' with DeepSpeed ZeRO-3"):
        MTPTrainerMixin._refuse_unsupported_engine_modes(trainer("coupled", 0.0, stage=3, alarm="decouple"))
    with pytest.raises(ValueError, match="alarm_action='decouple' with DeepSpeed gradient_clipping=1.0"):
        MTPTrainerMixin._refuse_unsupported_engine_modes(trainer("coupled", 1.0, alarm="decouple"))
    MTPTrainerMixin._refuse_unsupported_engine_modes(trainer("coupled", 1.0, stage=3, alarm="warn"))
    # a frozen LM head (LoRA, freeze_base) under ZeRO-3 only
    with pytest.raises(ValueError, match="DeepSpeed ZeRO-3 with a frozen LM head"):
        MTPTrainerMixin._refuse_unsupported_engine_modes(trainer("coupled", 1.0, stage=3, frozen=True))
    MTPTrainerMixin._refuse_unsupported_engine_modes(trainer("coupled", 1.0, stage=2, frozen=True))
    MTPTrainerMixin._refuse_unsupported_engine_modes(trainer("coupled", 1.0, engine=DistributedType.FSDP, frozen=True))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("engine", "lora_a_local"),
    # A [r=4, 128]: FSDP2 splits dim 0; ZeRO-2 keeps parameters whole. ZeRO-3 refuses LoRA (test below)
    [("fsdp2", "2x128"), ("zero2", "4x128")],
)
def test_lora_trains_adapters_and_heads_like_one_process(
    tmp_path, initial_model, one_process_lora, engine, lora_a_local
):
    """LoRA on the trunk's attention, heads trained in full, under each engine: the adapters are sharded with the
    rest, the run equals the 1-process run, and the saved folder loads with the adapter attached or merged
    (exported)."""
    port = {"fsdp2": 29599, "zero2": 29618}[engine]
    reports = launch_engine(engine, initial_model, tmp_path / "two", "coupled", "1.0", "lora", port=port)
    assert [(r["lora_A"], r["lora_A_full"]) for r in reports] == [(lora_a_local, "4x128")] * 2
    worst = assert_equal_to_one_process(reports, tmp_path / "two", one_process_lora)
    print(f"{engine} LoRA, weights vs 1 process, max |diff|:", worst)
    trained = MTPForCausalLM.from_pretrained(str(tmp_path / "two")).state_dict()
    assert any(v.abs().max() > 0 for k, v in trained.items() if "lora_B" in k)  # B starts at 0: the adapters learned
    merged = MTPForCausalLM.from_pretrained(str(tmp_path / "two"), merge_lora=True)  # exported as a plain model
    assert not any("lora" in k for k in merged.state_dict())


@pytest.mark.slow
def test_zero3_refuses_lora(tmp_path, initial_model):
    """LoRA freezes the LM head, and under ZeRO-3 the MTP loss's backward (recomputing its checkpointed logit chunks)
    then finds the LM head's weight released: the first step failed with a CheckpointError (recomputed shape [0]
    where [2048, 128] was saved). The run is refused at set-up with a one-line error instead."""
    pytest.importorskip("deepspeed")
    pytest.importorskip("peft")
    with pytest.raises(AssertionError, match="DeepSpeed ZeRO-3 with a frozen LM head"):
        launch_deepspeed(initial_model, tmp_path, 3, "coupled", "1.0", "lora", port=29619)
