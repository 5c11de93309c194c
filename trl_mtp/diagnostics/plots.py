"""The report's figures: one function per figure, `plot_x(run, path) -> bool` (False: no data, nothing written).

matplotlib with the Agg backend (no display). Depth 0 is the main head throughout; colours follow depth.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from trl_mtp.bootstrap import bootstrap_ci  # noqa: E402
from trl_mtp.diagnostics.run_data import RunData, reward_keys, series  # noqa: E402
from trl_mtp.diagnostics.stats import reliability  # noqa: E402

DPI = 80  # small files: the docs commit some of them


def color(depth: int):
    return plt.get_cmap("viridis")(min(depth, 5) / 5.5)


def save(fig, path) -> bool:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return True


def depth_label(depth: int) -> str:
    return "main (t+1)" if depth == 0 else f"depth {depth} (t+{depth + 1})"


def probe_depths(run: RunData) -> list[int]:
    return [s["depth"] for s in run.records[-1]["probe"]] if run.records else []


def plot_training_by_depth(run: RunData, path) -> bool:
    """Loss, accuracy and entropy of each depth over training, as the trainer logged them (mtp/*_depth_i)."""
    D = run.num_depths
    metrics = [("loss", "CE loss"), ("acc", "top-1 accuracy"), ("entropy", "entropy (nats)")]
    if not any(series(run.log_history, f"mtp/{m}_depth_1")[0] for m, _ in metrics):
        return False
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for ax, (metric, title) in zip(axes, metrics):
        for depth in range(1, D + 1):
            steps, values = series(run.log_history, f"mtp/{metric}_depth_{depth}")
            ax.plot(steps, values, color=color(depth), label=depth_label(depth))
        ax.set(title=f"training: {title}", xlabel="step")
    axes[0].legend(fontsize=8)
    return save(fig, path)


def plot_probe_by_depth(run: RunData, path) -> bool:
    """Accuracy, entropy, ECE and latent cosine per depth on the fixed probe batch, over training."""
    if not run.records:
        return False
    steps = [r["step"] for r in run.records]
    panels = [
        ("accuracy", "probe top-1 accuracy"),
        ("entropy", "probe mean entropy (nats)"),
        ("ece", "probe ECE"),
        ("latent_cos", "cos(head latent at t, trunk state at t+i)"),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.2))
    for ax, (key, title) in zip(axes, panels):
        for depth in probe_depths(run):
            values = [next((s.get(key) for s in r["probe"] if s["depth"] == depth), None) for r in run.records]
            if any(v is not None for v in values):
                ax.plot(
                    steps,
                    [np.nan if v is None else v for v in values],
                    marker=".",
                    color=color(depth),
                    label=depth_label(depth),
                )
        ax.set(title=title, xlabel="step")
    axes[0].legend(fontsize=8)
    return save(fig, path)


def plot_entropy_histograms(run: RunData, path) -> bool:
    """Entropy distribution of each depth's predictions on the probe batch: first record vs last."""
    if not run.records:
        return False
    shown = [run.records[0], run.records[-1]] if len(run.records) > 1 else [run.records[-1]]
    fig, axes = plt.subplots(1, len(shown), figsize=(5.5 * len(shown), 3.2), squeeze=False)
    for ax, record in zip(axes[0], shown):
        for s in record["probe"]:
            if "entropy_hist" not in s:
                continue
            hist = np.asarray(s["entropy_hist"])
            edges = np.linspace(0, s["entropy_max"], len(hist) + 1)
            ax.stairs(
                hist / max(hist.sum(), 1), edges, color=color(s["depth"]), label=depth_label(s["depth"]), linewidth=1.5
            )
        ax.set(title=f"entropy histogram, step {record['step']}", xlabel="entropy (nats)", ylabel="fraction")
    axes[0][0].legend(fontsize=8)
    return save(fig, path)


def plot_calibration(run: RunData, path) -> bool:
    """Reliability diagram of each depth at the last record (accuracy vs confidence of the top-1 token)."""
    if not run.records:
        return False
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    for s in run.records[-1]["probe"]:
        if "calibration" in s:
            conf, acc, _ = reliability(s["calibration"])
            ax.plot(
                conf, acc, marker="o", color=color(s["depth"]), label=f"{depth_label(s['depth'])}, ECE {s['ece']:.3f}"
            )
    ax.set(
        title=f"calibration, step {run.records[-1]['step']}",
        xlabel="confidence",
        ylabel="accuracy",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    ax.legend(fontsize=7)
    return save(fig, path)


def acceptance_points(run: RunData) -> list[tuple[int, list[float], float]]:
    """(step, acceptance by position, mean accepted length) from the records and `decoding.jsonl`."""
    points = [
        (r["step"], r["decoding"]["acceptance_by_position"], r["decoding"]["mean_accepted_length"])
        for r in run.records
        if r.get("decoding")
    ]
    points += [
        (d.get("step") or 0, d["acceptance_by_position"], d.get("mean_accepted_length", np.nan))
        for d in run.decoding
        if "acceptance_by_position" in d
    ]
    return sorted(points, key=lambda p: p[0])


def plot_acceptance(run: RunData, path) -> bool:
    """Self-speculative acceptance by draft position over training, and the mean accepted length."""
    points = acceptance_points(run)
    if not points:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    steps = [p[0] for p in points]
    for i in range(len(points[-1][1])):
        axes[0].plot(
            steps,
            [p[1][i] if i < len(p[1]) else np.nan for p in points],
            marker=".",
            color=color(i + 1),
            label=f"draft {i + 1} (depth {i + 1})",
        )
    axes[0].set(title="acceptance by position (drafts 1..i all kept)", xlabel="step", ylim=(-0.02, 1.02))
    axes[0].legend(fontsize=8)
    axes[1].plot(steps, [p[2] for p in points], marker=".", color="black")
    axes[1].set(title="tokens per base forward", xlabel="step")
    return save(fig, path)


def attention_maps(run: RunData) -> dict[str, np.ndarray]:
    if not run.snapshot:
        return {}
    return {k[len("attn__") :]: v.astype(np.float32) for k, v in run.snapshot.items() if k.startswith("attn__")}


def plot_attention(run: RunData, path) -> bool:
    """Attention maps (row 0 of the probe, mean over heads) of the base's last layers and the heads, latest record."""
    maps = attention_maps(run)
    if not maps:
        return False
    names = list(maps)
    fig, axes = plt.subplots(1, len(names), figsize=(3.3 * len(names), 3.4), squeeze=False)
    ids = run.meta.get("probe", {}).get("input_ids", [[]])[0]
    mask = run.meta.get("probe", {}).get("attention_mask", [[]])[0]
    n = int(sum(mask)) if mask else next(iter(maps.values())).shape[-1]
    for ax, name in zip(axes[0], names):
        grid = maps[name].mean(0)[:n, :n]
        ax.imshow(grid, cmap="magma", vmin=0, vmax=max(float(grid.max()), 1e-6))
        ax.set_title(name, fontsize=9)
        if n <= 24 and ids:
            labels = [run.token(t) for t in ids[:n]]
            ax.set_xticks(range(n), labels, rotation=90, fontsize=6)
            ax.set_yticks(range(n), labels, fontsize=6)
    fig.suptitle(f"attention (query rows, key columns), mean over heads, step {run.snapshot_step}", fontsize=10)
    return save(fig, path)


def plot_weights(run: RunData, path) -> bool:
    """Per-depth parameter norms, update norms and cosine to the base's last layer over training; cosine between
    depths at the last record."""
    if not run.records or "weights" not in run.records[0]:
        return False
    steps = [r["step"] for r in run.records]
    groups = list(run.records[-1]["weights"]["norm"])
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.2))
    for key, ax, title in [
        ("norm", axes[0], "parameter norm"),
        ("update_norm", axes[1], "update norm since last record"),
        ("cos_to_base_last_layer", axes[2], "cos(head, base last layer)"),
    ]:
        for g in groups:
            values = [r["weights"][key].get(g) for r in run.records]
            if any(v is not None for v in values):
                ax.plot(
                    steps,
                    [np.nan if v is None else v for v in values],
                    marker=".",
                    color="grey" if g == "shared" else color(int(g)),
                    label=g if g == "shared" else f"depth {g}",
                )
        ax.set(title=title, xlabel="step")
    axes[0].legend(fontsize=8)
    matrix = np.array(
        [[np.nan if v is None else v for v in row] for row in run.records[-1]["weights"]["cos_between_depths"]],
        dtype=float,
    )
    if matrix.size:
        image = axes[3].imshow(matrix, cmap="viridis")
        labels = [str(i) for i in range(1, len(matrix) + 1)]
        axes[3].set_xticks(range(len(matrix)), labels)
        axes[3].set_yticks(range(len(matrix)), labels)
        fig.colorbar(image, ax=axes[3])
    axes[3].set(title="cos between depths' weights", xlabel="depth", ylabel="depth")
    return save(fig, path)


def plot_rollouts(run: RunData, path) -> bool:
    """On the tokens the policy actually sampled (RL rollouts): each depth's accuracy and NLL over training."""
    records = [r for r in run.records if r.get("rollouts")]
    if not records:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    steps = [r["step"] for r in records]
    for key, ax in zip(("accuracy", "nll"), axes):
        for depth in [s["depth"] for s in records[-1]["rollouts"]]:
            values = [next((s.get(key) for s in r["rollouts"] if s["depth"] == depth), None) for r in records]
            ax.plot(
                steps,
                [np.nan if v is None else v for v in values],
                marker=".",
                color=color(depth),
                label=depth_label(depth),
            )
        ax.set(title=f"sampled rollout tokens: {key}", xlabel="step")
    axes[0].legend(fontsize=8)
    return save(fig, path)


def plot_consistency(run: RunData, path) -> bool:
    """Heads vs the policy's own future (trl-mtp probe): KL, agreement and accuracy by depth; KL by position."""
    c = run.consistency
    if not c or not c.get("by_depth"):
        return False
    by_depth = c["by_depth"]
    depths = [e["depth"] for e in by_depth]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))

    def bars(ax, key, offset, label, width=0.35, col=None):
        values = [e.get(key, np.nan) for e in by_depth]
        errors = np.array(
            [[v - e.get(f"{key}_ci", [v, v])[0], e.get(f"{key}_ci", [v, v])[1] - v] for v, e in zip(values, by_depth)]
        ).T
        ax.bar(np.array(depths) + offset, values, width, yerr=errors, capsize=3, label=label, color=col)

    bars(axes[0], "kl", 0, "KL(policy future || head)", width=0.6, col="tab:red")
    axes[0].set(title="KL by depth (90% CI)", xlabel="depth", xticks=depths)
    bars(axes[1], "agree", -0.2, "top-1 agreement with policy", width=0.2, col="tab:blue")
    bars(axes[1], "head_correct", 0.0, "head accuracy", width=0.2, col="tab:green")
    bars(axes[1], "policy_correct", 0.2, "policy-marginal accuracy", width=0.2, col="tab:olive")
    axes[1].set(title="agreement and accuracy by depth", xlabel="depth", xticks=depths, ylim=(0, 1.05))
    axes[1].legend(fontsize=7)
    positions = sorted({e["position"] for e in c["by_position"]})
    grid = np.full((len(depths), len(positions)), np.nan)
    for e in c["by_position"]:
        grid[depths.index(e["depth"]), positions.index(e["position"])] = e.get("kl", np.nan)
    image = axes[2].imshow(grid, aspect="auto", cmap="Reds")
    axes[2].set(
        title="KL by depth and position",
        xlabel="position",
        ylabel="depth",
        xticks=range(len(positions)),
        yticks=range(len(depths)),
    )
    axes[2].set_xticklabels(positions)
    axes[2].set_yticklabels(depths)
    fig.colorbar(image, ax=axes[2])
    return save(fig, path)


def bootstrap_band(values: list[float], window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and 90% bootstrap CI of the trailing `window` logged values at each point."""
    mean, low, high = [], [], []
    for i in range(len(values)):
        chunk = np.asarray(values[max(0, i - window + 1) : i + 1])
        m, lo, hi = bootstrap_ci(chunk, n_resamples=1000) if chunk.size > 1 else (chunk[0],) * 3
        mean.append(m)
        low.append(lo)
        high.append(hi)
    return np.array(mean), np.array(low), np.array(high)


def plot_rewards(run: RunData, path) -> bool:
    """Reward curves: logged values (dots) and the trailing-window mean with its 90% bootstrap band."""
    keys = reward_keys(run.log_history)
    if not keys:
        return False
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        steps, values = series(run.log_history, key)
        window = max(3, len(values) // 10)
        mean, low, high = bootstrap_band(values, window)
        ax.plot(steps, values, ".", color="grey", alpha=0.5)
        ax.plot(steps, mean, color="tab:blue")
        ax.fill_between(steps, low, high, color="tab:blue", alpha=0.25, label=f"90% CI, window {window}")
        ax.set(title=key, xlabel="step")
        ax.legend(fontsize=8)
    return save(fig, path)


RUN_PLOTS = {
    "training_by_depth": plot_training_by_depth,
    "probe_by_depth": plot_probe_by_depth,
    "entropy_histograms": plot_entropy_histograms,
    "calibration": plot_calibration,
    "acceptance": plot_acceptance,
    "attention": plot_attention,
    "weights": plot_weights,
    "rollouts": plot_rollouts,
    "consistency": plot_consistency,
    "rewards": plot_rewards,
}


# -- comparison across runs ----------------------------------------------------------------------------------------
def plot_compare_by_depth(runs: list[RunData], path) -> bool:
    """Last-record probe accuracy and entropy by depth, and consistency KL by depth, one line per run."""
    if not any(r.records or r.consistency for r in runs):
        return False
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))
    for run in runs:
        if run.records:
            probe = run.records[-1]["probe"]
            axes[0].plot([s["depth"] for s in probe], [s.get("accuracy") for s in probe], marker="o", label=run.name)
            axes[1].plot([s["depth"] for s in probe], [s.get("entropy") for s in probe], marker="o", label=run.name)
        if run.consistency:
            by_depth = run.consistency["by_depth"]
            axes[2].plot([e["depth"] for e in by_depth], [e.get("kl") for e in by_depth], marker="o", label=run.name)
    for ax, title in zip(
        axes, ("probe accuracy (last record)", "probe entropy (last record)", "KL(policy future || head)")
    ):
        ax.set(title=title, xlabel="depth")
    axes[0].legend(fontsize=8)
    return save(fig, path)


def plot_compare_curves(runs: list[RunData], path) -> bool:
    """The main head's next-token accuracy on the training batches (next-token and MTP runs side by side: the
    trainers' losses are not comparable, an MTP run's includes lambda x the heads' loss), the depth-1 loss,
    acceptance of draft 1 and the first reward metric over steps, one line per run."""
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.2))
    drawn = False
    for run in runs:
        for ax, key in zip(axes, ("mean_token_accuracy", "mtp/loss_depth_1")):
            steps, values = series(run.log_history, key)
            if steps:
                ax.plot(steps, values, marker=".", label=run.name)
                drawn = True
        points = acceptance_points(run)
        if points:
            axes[2].plot([p[0] for p in points], [p[1][0] for p in points], marker=".", label=run.name)
            drawn = True
        keys = reward_keys(run.log_history)
        if keys:
            steps, values = series(run.log_history, keys[0])
            mean, low, high = bootstrap_band(values, max(3, len(values) // 10))
            axes[3].plot(steps, mean, label=f"{run.name}: {keys[0]}")
            axes[3].fill_between(steps, low, high, alpha=0.2)
            drawn = True
    titles = (
        "next-token accuracy (training batches)",
        "training loss, depth 1",
        "acceptance of draft 1",
        "reward (90% bootstrap band)",
    )
    for ax, title in zip(axes, titles):
        ax.set(title=title, xlabel="step")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    if not drawn:
        plt.close(fig)
        return False
    return save(fig, path)


COMPARE_PLOTS = {"compare_by_depth": plot_compare_by_depth, "compare_curves": plot_compare_curves}
