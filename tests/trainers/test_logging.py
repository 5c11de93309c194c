"""The `mtp/*` and `spec/*` metrics reach the `report_to` backends: read back from TensorBoard's event files and from
a local MLflow file store (no server, no network; the `.[tracking]` extra)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from trl_mtp import MTPSFTConfig, MTPSFTTrainer, PPOConfig, PPOTrainer
from trl_mtp.embedded.tasks.registry import get_task


def tensorboard_scalars(output_dir: Path) -> dict[str, list[float]]:
    """metric -> values of every training scalar in the TensorBoard event files under `output_dir` (TensorBoard
    writes under output_dir/runs by default, and prefixes training metrics with `train/`)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = list(output_dir.rglob("events.out.tfevents.*"))
    assert files, f"no event file under {output_dir}"
    out: dict[str, list[float]] = {}
    for path in files:
        acc = EventAccumulator(str(path))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            if tag.startswith("train/"):
                out.setdefault(tag.removeprefix("train/"), []).extend(e.value for e in acc.Scalars(tag))
    return out


def mlflow_metrics(store: Path) -> dict[str, list[float]]:
    """metric -> values, by step, of the one run in the MLflow file store `store`."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store.as_uri())
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return {
        name: [m.value for m in sorted(client.get_metric_history(run.info.run_id, name), key=lambda m: m.step)]
        for name in run.data.metrics
    }


@pytest.fixture(params=["tensorboard", "mlflow"])
def tracker(request, tmp_path, monkeypatch):
    """(report_to name, reader of what the run logged: output_dir -> {metric: values})."""
    pytest.importorskip(request.param)
    if request.param == "tensorboard":
        return "tensorboard", tensorboard_scalars
    store = tmp_path / "mlruns"  # a local file store: MLflow's tracking without a server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store in maintenance mode
    return "mlflow", lambda output_dir: mlflow_metrics(store)


def logged(trainer, name: str) -> list[float]:
    return [h[name] for h in trainer.state.log_history if name in h]


def test_sft_mtp_metrics_reach_the_tracker(tmp_path, tokenizer, tiny_model, tracker):
    report_to, read_back = tracker
    args = MTPSFTConfig(
        output_dir=str(tmp_path / "run"),
        report_to=[report_to],
        max_steps=4,
        logging_steps=2,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        activation_checkpointing=False,
        save_strategy="no",
        dataloader_pin_memory=False,
        disable_tqdm=True,
        bf16=False,
        head_type="blockwise",
        num_mtp_heads=2,
    )
    model = tiny_model()
    trainer = MTPSFTTrainer(model, args, train_dataset=get_task("arithmetic").train(32), processing_class=tokenizer)
    trainer.train()
    metrics = read_back(tmp_path / "run")
    for name in ("mtp/loss", "mtp/loss_depth_1", "mtp/loss_depth_2", "mtp/acc_depth_1", "mtp/entropy_depth_2"):
        assert metrics[name] == pytest.approx(logged(trainer, name), rel=1e-6), name
    assert len(metrics["mtp/loss_depth_1"]) == 2


def test_ppo_speculative_rollouts_log_spec_metrics_to_the_tracker(tmp_path, tokenizer, tiny_model, tracker):
    report_to, read_back = tracker
    args = PPOConfig(
        output_dir=str(tmp_path / "run"),
        report_to=[report_to],
        max_steps=2,
        per_device_train_batch_size=4,
        num_mini_batches=2,
        num_ppo_epochs=1,
        response_length=6,
        learning_rate=1e-3,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
        dataloader_pin_memory=False,
        head_type="blockwise",
        num_mtp_heads=2,
        mode="decoupled",
        speculative_rollouts=True,
    )
    model = tiny_model()
    trainer = PPOTrainer(
        model,
        args,
        train_dataset=get_task("copy", length=3).train(16),
        processing_class=tokenizer,
        reward_funcs=lambda prompts, completions, **_: [0.0] * len(prompts),
    )
    trainer.train()
    metrics = read_back(tmp_path / "run")
    for name in ("spec/mean_accepted_length", "spec/acceptance_pos_1", "spec/acceptance_pos_2", "mtp/loss_depth_1"):
        values = metrics[name]
        assert len(values) == 2 and all(math.isfinite(v) for v in values), name
        assert values == pytest.approx(logged(trainer, name), rel=1e-6), name
