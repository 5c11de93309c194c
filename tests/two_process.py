"""Two-process runs on CPU (DDP over gloo through `accelerate launch`), as they would run on 2 GPUs.

Both halves live here: `launch` (the test's side) starts a script in 2 processes and parses what each rank
reported; `report_and_exit` (the script's side) reports one rank's results and leaves. Both ranks share one stdout
pipe, so a report is written as one short `os.write` that starts on a fresh line: a rank's log printing can never
split it (a plain `print` was once glued onto the other rank's last log line, and the rank went unseen).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPORT = re.compile(r"^RANK (\d+) OF (\d+)((?: \S+=\S+)*)$", re.MULTILINE)
# scripts/test.sh runs pytest in 2 xdist workers: every test that calls `launch` is marked
# `pytest.mark.xdist_group(TWO_PROCESS_GROUP)`, so these runs go one after another on one worker while the other
# worker runs the 1-process tests (two such runs at once would put 4 busy processes on 2 cores).
TWO_PROCESS_GROUP = "two_processes"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "accelerate"  # the accelerate configs users launch with


def zero2_config_without_clipping(folder: Path) -> Path:
    """The ZeRO-2 example config with the engine's gradient clipping off (decoupled mode is refused where the engine
    clips), written into `folder`."""
    example = (EXAMPLES / "deepspeed_zero2.yaml").read_text()
    assert "gradient_clipping: 1.0" in example
    config = folder / "deepspeed_zero2_no_clipping.yaml"
    config.write_text(example.replace("gradient_clipping: 1.0", "gradient_clipping: 0.0"))
    return config


def report_and_exit(accelerator, **fields) -> None:
    """Write `RANK i OF n key=value ...` for this rank, wait for the other rank, and leave."""
    import torch.distributed as dist

    sys.stdout.flush()
    pairs = "".join(f" {key}={value}" for key, value in fields.items())
    os.write(1, f"\nRANK {accelerator.process_index} OF {accelerator.num_processes}{pairs}\n".encode())
    if dist.is_initialized():
        dist.barrier()  # rank 0 may still be saving
        dist.destroy_process_group()
    # Every result is written: leave without interpreter teardown, where torch's gloo threads sometimes abort a
    # rank ("terminate called without an active exception", seen under load even after the barrier and destroy).
    os._exit(0)


def enable_cpu_fsdp() -> None:
    """Let accelerate's FSDP plugin run on CPU processes (gloo).

    accelerate only switches to FSDP on accelerator devices: with `use_cpu` (the only way to get gloo processes)
    an FSDP config silently becomes plain data parallelism (MULTI_CPU). torch's `fully_shard` itself runs on CPU
    over gloo, so here the FSDP plugin accelerate built from the launch config is kept and the state is switched
    to FSDP after it initialised; everything after that (`fsdp2_prepare_model`, the Trainer's FSDP save and
    clipping paths) is accelerate's and the Trainer's own code."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    init = AcceleratorState.__init__

    def fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
        init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # AcceleratorState() copies it

    AcceleratorState.__init__ = fsdp_on_cpu


def without_deepspeed_shm_op() -> None:
    """Start DeepSpeed's CPU runs without its shared-memory all-reduce op. DeepSpeed's CPU accelerator compiles it
    (C++, with ninja) when its comm backend starts, once per install and again whenever the install's path changes
    (a fresh clone's venv): seen 42 s, and minutes under load. It only serves `inference_all_reduce`
    (DeepSpeed's inference and tensor-parallel layers); ZeRO training reduces through torch.distributed (gloo here,
    NCCL on GPUs), with or without it."""
    import deepspeed.comm.torch

    deepspeed.comm.torch.build_shm_op = lambda: None


def local_shape(param) -> str:
    """This rank's part of `param` as `AxB`: an FSDP2 DTensor's local shard, a ZeRO-3 parameter's flat partition
    (`ds_tensor`), or the whole tensor where it is not sharded."""
    if hasattr(param, "to_local"):
        param = param.to_local()
    elif hasattr(param, "ds_tensor"):
        param = param.ds_tensor
    return "x".join(map(str, param.shape))


def full_shape(param) -> str:
    """The whole parameter's shape as `AxB`, however it is sharded (a ZeRO-3 parameter's own shape is empty)."""
    return "x".join(map(str, getattr(param, "ds_shape", param.shape)))


def fingerprint(module, exclude: str | None = None) -> str:
    """`sum,sum of squares` (float64) over every parameter of `module` (those whose name contains `exclude` left
    out), FSDP2's shards and ZeRO-3's partitions gathered in full (a collective: every rank calls it): equal on ranks,
    and in a saved copy, that hold the same model."""
    from trl_mtp.heads.trunk import gathered

    total, squares = 0.0, 0.0
    params = [p for name, p in module.named_parameters() if not (exclude and exclude in name)]
    with gathered(params):
        for param in params:
            full = (param.full_tensor() if hasattr(param, "full_tensor") else param).detach().double()
            total += full.sum().item()
            squares += full.square().sum().item()
    return f"{total:.10e},{squares:.10e}"


def parse_reports(stdout: str) -> list[dict[str, str]]:
    return [
        {"rank": rank, "world": world, **dict(pair.split("=", 1) for pair in pairs.split())}
        for rank, world, pairs in REPORT.findall(stdout)
    ]


def launch(
    script: Path, *args: str, port: int, config_file: Path | None = None, env: dict[str, str | None] | None = None
) -> list[dict[str, str]]:
    """Run `script` in 2 CPU processes; return each rank's report (`rank`, `world` and its fields), by rank.
    `env`: extra environment variables; None removes one (DeepSpeed runs without ACCELERATE_USE_CPU)."""
    group = os.environ.get("TRL_MTP_TEST_XDIST_GROUP")  # the running test's group, set by tests/conftest.py
    if os.environ.get("PYTEST_XDIST_WORKER") and group != TWO_PROCESS_GROUP:
        raise RuntimeError(f"a 2-process test in xdist group {group!r}: mark it xdist_group({TWO_PROCESS_GROUP!r})")
    accelerate = Path(sys.executable).with_name("accelerate")
    # `accelerate launch --cpu --num_processes 2` starts one process; these forms start two (STACK_NOTES)
    layout = (
        ["--config_file", str(config_file)]
        if config_file
        else ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--dynamo_backend", "no"]
    )
    cmd = [
        str(accelerate),
        "launch",
        *layout,
        "--mixed_precision",
        "no",
        "--main_process_port",
        str(port),
        str(script),
        *args,
    ]
    reports = parse_reports(_run(cmd, {"ACCELERATE_USE_CPU": "1", **(env or {})}))
    assert sorted(report["rank"] for report in reports) == ["0", "1"], reports
    assert all(report["world"] == "2" for report in reports), reports
    return sorted(reports, key=lambda report: report["rank"])


def run_one(script: Path, *args: str) -> dict[str, str]:
    """Run `script` in 1 plain process (the reference of a 2-process run); return its report."""
    (report,) = parse_reports(_run([sys.executable, str(script), *args], {}))
    return report


def _run(cmd: list[str], env: dict[str, str | None]) -> str:
    # the script must import this checkout's trl_mtp, not whichever one the venv has installed
    root = str(Path(__file__).resolve().parents[1])
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
        **env,
    }
    env = {key: value for key, value in env.items() if value is not None}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout
