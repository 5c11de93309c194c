"""A tiny recorded MTP-SFT run (parallel heads: attention maps), saved, probed, shared by the diagnostics tests."""

from __future__ import annotations

import pytest
from small_runs import SMALL_RUN

from trl_mtp.embedded.tasks.registry import get_task

SFT = {**SMALL_RUN, "max_steps": 4, "per_device_train_batch_size": 8, "bf16": False}


@pytest.fixture(scope="session")
def recorded_run(tmp_path_factory, tokenizer, tiny_model):
    """Folder of a 4-step MTP-SFT run (tiny Llama, parallel heads, D=2) with the recorder every 2 steps, its saved
    model, and `trl-mtp probe` output. Returns (run_dir, trainer, recorder)."""
    from trl_mtp import MTPSFTConfig, MTPSFTTrainer, cli
    from trl_mtp.diagnostics import MTPRecorder, make_probe_batch

    run_dir = tmp_path_factory.mktemp("recorded") / "sft-parallel"
    task = get_task("arithmetic")
    args = MTPSFTConfig(output_dir=str(run_dir), head_type="parallel", **SFT)
    trainer = MTPSFTTrainer(tiny_model(), args, train_dataset=task.train(64), processing_class=tokenizer)
    recorder = MTPRecorder(
        trainer.mtp_model, make_probe_batch(tokenizer, task.eval(8)), every=2, keep_snapshots=2, tokenizer=tokenizer
    )
    trainer.add_callback(recorder)
    trainer.train()
    trainer.save_model(str(run_dir))
    assert (
        cli.main(["probe", str(run_dir), "--task", "arithmetic", "--n", "2", "--positions", "3", "--samples", "8"]) == 0
    )
    return run_dir, trainer, recorder
