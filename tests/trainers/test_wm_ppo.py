"""World-model PPO (WorldModelPPOTrainer): wiring, gradient routing (decoupled leaves the policy's update
bit-identical), imagination (independent rollouts per prefix, no policy gradients), return normalisation,
save/resume, and an end-to-end CLI run with every part switched on."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest
import torch

import trl_mtp.world_model as world_model_module
from trl_mtp import MTPPPOConfig, MTPPPOTrainer, WorldModelPPOConfig, WorldModelPPOTrainer
from trl_mtp.embedded.tasks.registry import get_task
from trl_mtp.heads.base import shift_tokens
from trl_mtp.world_model import PercentileNormalizer, PrefixRollouts, TwoHotValueHead, WorldModel

WM_METRICS = (
    "wm/latent_cos_depth_1",
    "wm/latent_cos_depth_2",
    "wm/token_kl_depth_1",
    "wm/token_kl_depth_2",
    "wm/reward_pred_error",
    "wm/imagined_return",
    "wm/return_scale",
    "val/explained_variance",
    "loss/wm_latent",
    "loss/wm_token_kl",
    "loss/wm_reward",
    "loss/wm_continue",
    "loss/wm_imagination",
    "loss/wm_slow_critic",
)


def first_token_parity(prompts, completions, completion_ids, **kwargs):
    return [float(ids[0] % 2) if ids else 0.0 for ids in completion_ids]


@pytest.fixture(scope="module")
def prompts():
    return get_task("copy", length=3).train(16)


@pytest.fixture
def wm_trainer(ppo_args, tiny_model, tokenizer, prompts):
    def make(**overrides):
        settings = dict(
            num_mini_batches=1,
            num_ppo_epochs=1,
            response_length=5,
            head_type="sequential",
            world_model=True,
            logging_steps=1,
        )
        args = ppo_args(config_class=WorldModelPPOConfig, **{**settings, **overrides})
        return WorldModelPPOTrainer(
            tiny_model(), args, train_dataset=prompts, processing_class=tokenizer, reward_funcs=first_token_parity
        )

    return make


def grads_of(module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def test_modules_and_metrics(wm_trainer):
    trainer = wm_trainer()
    model = trainer.model
    assert isinstance(model.world_model, WorldModel) and model.world_model.dynamics_kind == "sequential"
    assert isinstance(model.value_head, TwoHotValueHead) and isinstance(model.return_normalizer, PercentileNormalizer)
    assert model.world_model.dynamics is None  # the sequential heads are the prior: no second copy of them
    trainer.train()
    logged = {k for h in trainer.state.log_history for k in h}
    assert set(WM_METRICS) <= logged, set(WM_METRICS) - logged
    mlp = wm_trainer(head_type="blockwise", wm_critic="scalar", wm_return_norm="whiten")
    assert mlp.model.world_model.dynamics_kind == "mlp" and mlp.model.return_normalizer is None
    with pytest.raises(ValueError, match="head_type='sequential'"):
        wm_trainer(head_type="blockwise", wm_dynamics="sequential")
    with pytest.raises(ValueError, match="reward and continue"):
        wm_trainer(wm_reward_head=False)


def _one_batch(trainer):
    trainer.create_optimizer_and_scheduler(num_training_steps=1)
    from transformers import TrainerState

    trainer.state = TrainerState()
    trainer.state.max_steps = 1
    trainer.model_wrapped = trainer.model
    return trainer.make_rollouts(0)


@pytest.mark.parametrize("routing", ["decoupled", "coupled"])
def test_gradient_routing_and_imagination_gives_no_policy_gradient(wm_trainer, routing):
    """Decoupled: no world-model term reaches the policy, nor does the critic's own loss (the world model trains the
    critic); coupled: the latent loss does, and the critic trains the trunk as in plain PPO; the imagination term
    never reaches the LM head through imagined tokens (its only gradient is the critic's, on real states)."""
    trainer = wm_trainer(wm_gradient=routing)
    rollouts = _one_batch(trainer)
    with torch.no_grad():  # a critic with an input gradient (its zero-initialised output layer has none)
        trainer.model.value_head.out.weight[120:135].normal_(std=0.5)
    policy = trainer.mtp_model.base_model
    policy_params = {n for n, _ in policy.named_parameters() if not n.startswith("mtp_heads.")}
    terms, _ = trainer.compute_losses(trainer.model, rollouts)
    wm_terms = [name for name in terms if name.startswith("wm_")]
    assert {"wm_latent", "wm_token_kl", "wm_reward", "wm_continue", "wm_imagination", "wm_slow_critic"} <= set(wm_terms)
    for name in [*wm_terms, "value"]:
        trainer.model.zero_grad(set_to_none=True)
        terms, _ = trainer.compute_losses(trainer.model, rollouts)
        terms[name].backward()
        touched = set(grads_of(policy)) & policy_params
        if routing == "decoupled":  # the critic too: the world model trains it
            assert not touched, (name, sorted(touched)[:3])
        elif name == "value":
            assert touched  # coupled: the critic trains the trunk as in plain PPO
        elif name == "wm_latent":
            assert touched  # coupled: the representation gradient reaches the trunk
        if name == "wm_imagination":
            assert grads_of(trainer.model.value_head)  # the critic learns from the imagined targets
            assert "lm_head.weight" not in touched or routing == "coupled" and policy.config.tie_word_embeddings


def test_imagined_rollouts_carry_no_graph(wm_trainer):
    trainer = wm_trainer(wm_imagination_horizon=3)
    rollouts = _one_batch(trainer)
    model = trainer.model
    with torch.enable_grad():
        model(rollouts.query_responses, rollouts.attention_mask)
        hidden = trainer.mtp_model.trunk.hidden
        assert hidden.requires_grad
        start, trajectory = model.world_model.imagine(
            hidden, rollouts.query_responses, model.value_head, return_trajectory=True
        )
    assert not start.requires_grad and start.grad_fn is None  # nothing to backpropagate: no policy gradient
    assert trajectory.shape == (*rollouts.query_responses.shape, 4)  # a_0 from the policy, then 3 from the heads
    assert trainer.mtp_model.trunk.hidden is hidden  # the capture of the update's forward is kept


def _forward(trainer, rollouts) -> torch.Tensor:
    """The trunk's hidden states [B, L, d] of the rollouts (no graph)."""
    with torch.no_grad():
        trainer.model(rollouts.query_responses, rollouts.attention_mask)
    return trainer.mtp_model.trunk.hidden


def _read_tokens(trainer) -> None:
    """Give the sequential heads' embedding input weight (zero at init: the chain starts by passing h through), so
    that their latents depend on the tokens."""
    with torch.no_grad():
        for depth in trainer.mtp_model.heads.layers:
            d = depth.eh_proj.weight.size(0)
            depth.eh_proj.weight[:, :d].normal_(std=0.2)


def test_imagination_rollouts_are_independent_per_prefix(wm_trainer, monkeypatch):
    """Imagination with the sequential prior: perturbing the tokens imagined from prefix s changes the imagined return
    at s and leaves the return imagined from every other prefix exactly as it was (each rollout reads only its own
    prefix and its own imagined tokens; running the blocks over all prefixes at once lets later ones read them)."""
    torch.manual_seed(0)
    trainer = wm_trainer(wm_imagination_horizon=3)
    rollouts = _one_batch(trainer)
    model, ids = trainer.model, rollouts.query_responses
    with torch.no_grad():  # read-outs that depend on the latents (bins near 0 only: the far bins stay symmetric)
        for head in (model.world_model.reward_head.out, model.value_head.out):
            head.weight[120:135].normal_(std=0.5)
        _read_tokens(trainer)
    hidden = _forward(trainer, rollouts)
    s = rollouts.context_length + 1  # a prefix inside the response; every later prefix would read its tokens

    def imagined_returns(perturbed: int | None) -> torch.Tensor:
        def sample(logits, *rest):  # greedy, deterministic; the perturbed prefix takes the next token id instead
            tokens = logits.argmax(-1)
            if perturbed is not None:
                tokens[:, perturbed] = (tokens[:, perturbed] + 1) % logits.size(-1)
            return tokens

        monkeypatch.setattr(world_model_module, "sample_tokens", sample)
        return model.world_model.imagine(hidden, ids, model.value_head)

    base, moved = imagined_returns(None), imagined_returns(s)
    others = torch.arange(ids.size(1)) != s
    assert not torch.allclose(moved[:, s], base[:, s])  # the perturbation matters where it was made
    assert torch.equal(moved[:, others], base[:, others])


def test_prefix_rollouts_on_real_tokens_are_the_teacher_forced_chain(wm_trainer):
    """Fed the real continuation as its imagined tokens, each rollout of the sequential prior reproduces the heads'
    teacher-forced chain h^_{t+k} = f(h^_{t+k-1}, emb(x_{t+k})) at its start column t, step after step."""
    torch.manual_seed(0)
    trainer = wm_trainer()
    rollouts = _one_batch(trainer)
    wm, ids = trainer.model.world_model, rollouts.query_responses
    _read_tokens(trainer)
    hidden = _forward(trainer, rollouts)
    layer_kwargs = trainer.mtp_model.trunk.layer_call_kwargs()
    L, H = ids.size(1), 3
    columns = torch.arange(rollouts.context_length - 1, L - H)
    chain = PrefixRollouts(wm, hidden, ids, columns, H)
    teacher_forced = hidden
    with torch.no_grad():
        for k in range(1, H + 1):
            real = shift_tokens(ids, k, 0)  # x_{t+k} at column t
            teacher_forced = wm.prior_step(k, teacher_forced, real, layer_kwargs)
            imagined = chain.step(k, real[:, columns])
            assert torch.allclose(imagined, teacher_forced[:, columns], atol=1e-5), k


def test_discrete_latent_is_gone():
    """The 32 x 32 categorical latent read by nothing was removed (the transition is deterministic given the token)."""
    with pytest.raises(TypeError, match="wm_discrete_latent"):
        WorldModelPPOConfig(output_dir="x", world_model=True, wm_discrete_latent=True)


def test_decoupled_policy_update_ignores_world_model_weights(wm_trainer, tiny_model):
    """Decoupled: after one iteration (2 epochs x 2 mini-batches) the policy's weights are bit-identical whatever the
    world-model loss weights, imagination included (its sampler is its own); the critic the world model trains reads
    sg(h) and is clipped apart from the policy, so it cannot carry them into the trunk."""

    def policy_after(**coefs) -> dict[str, torch.Tensor]:
        trainer = wm_trainer(max_steps=1, num_ppo_epochs=2, num_mini_batches=2, per_device_train_batch_size=2, **coefs)
        trainer.train()
        return {
            n: p.detach().clone()
            for n, p in trainer.mtp_model.base_model.named_parameters()
            if not n.startswith("mtp_heads.")
        }

    base = policy_after()
    initial = dict(tiny_model().named_parameters())
    assert any(not torch.equal(base[n], initial[n]) for n in base)  # the policy did move
    for change in (
        {"wm_slow_critic_coef": 0.3},
        {"wm_imagination_coef": 0.0},
        {"wm_latent_coef": 0.0, "wm_token_kl_coef": 1.0, "wm_reward_coef": 3.0, "wm_continue_coef": 0.0},
    ):
        other = policy_after(**change)
        moved = [n for n in base if not torch.equal(base[n], other[n])]
        assert not moved, (change, moved[:3], max((base[n] - other[n]).abs().max().item() for n in moved))


def test_percentile_normalisation_replaces_whitening(wm_trainer):
    trainer = wm_trainer(wm_return_norm="percentile")
    rollouts = _one_batch(trainer)
    raw, _ = __import__("trl_mtp.trainers.ppo_core", fromlist=["gae_advantages"]).gae_advantages(
        rollouts.rewards, rollouts.values, rollouts.mask, 1.0, 0.95
    )
    scale = trainer.model.return_normalizer.scale()
    assert torch.allclose(rollouts.advantages, (raw / scale).masked_fill(~rollouts.mask, 0.0))
    assert trainer._metrics["train"]["wm/return_scale"]


def test_save_and_resume_world_model(wm_trainer, tmp_path):
    trainer = wm_trainer(save_strategy="steps", save_steps=1, max_steps=1)
    trainer.train()
    checkpoint = tmp_path / "run" / "checkpoint-1"
    assert (checkpoint / "world_model.safetensors").is_file()
    saved = {k: v.clone() for k, v in trainer.model.world_model.state_dict().items()}
    resumed = wm_trainer(save_strategy="no", max_steps=1)
    resumed._load_from_checkpoint(str(checkpoint))
    for key, value in resumed.model.world_model.state_dict().items():
        assert torch.equal(value, saved[key]), key
    assert torch.equal(resumed.model.return_normalizer.high, trainer.model.return_normalizer.high)


# -- the split: PPO knows nothing of the world model ------------------------------------------------------------------
def test_plain_ppo_config_has_no_world_model_field():
    """The world model's fields live in `WorldModelPPOConfig` only; `MTPPPOConfig` refuses them."""

    def world_fields(cls):
        return {f.name for f in dataclasses.fields(cls) if f.name == "world_model" or f.name.startswith("wm_")}

    assert world_fields(MTPPPOConfig) == set()
    assert len(world_fields(WorldModelPPOConfig)) == 22 and "wm_critic" in world_fields(WorldModelPPOConfig)
    assert issubclass(WorldModelPPOConfig, MTPPPOConfig) and issubclass(WorldModelPPOTrainer, MTPPPOTrainer)
    with pytest.raises(TypeError, match="wm_critic"):
        MTPPPOConfig(output_dir="x", wm_critic="scalar")
    with pytest.raises(ValueError, match="WorldModelPPOConfig.world_model=False"):
        WorldModelPPOConfig(output_dir="x", world_model=False)


def test_plain_ppo_has_no_world_model(tmp_path, tiny_model, tokenizer, prompts):
    """`MTPPPOTrainer`: no world-model attribute on the trained module tree, no `wm` metric, the heads alone clipped
    apart from the policy, and no world-model name in PPO's modules (the world model plugs in by overriding hooks)."""
    import ast
    import inspect

    from trl_mtp.trainers import ppo_config, ppo_models, ppo_trainer

    for module in (ppo_trainer, ppo_models, ppo_config):
        tree = ast.parse(inspect.getsource(module))
        docstrings = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
        code_words = [
            getattr(node, "id", None)
            or getattr(node, "attr", None)
            or getattr(node, "name", None)
            or (node.value if isinstance(node, ast.Constant) and id(node) not in docstrings else None)
            for node in ast.walk(tree)
        ]  # names, attributes, imports and strings; docs may name the subclass
        found = [
            w for w in code_words if isinstance(w, str) and w.lower().startswith(("world", "wm_", "wm/", "twohot"))
        ]
        assert not found, (module.__name__, found)
    args = MTPPPOConfig(
        output_dir=str(tmp_path / "run"),
        max_steps=1,
        per_device_train_batch_size=4,
        num_ppo_epochs=1,
        response_length=5,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        head_type="sequential",
        num_mtp_heads=2,
        dataloader_pin_memory=False,
        logging_steps=1,
    )
    trainer = MTPPPOTrainer(
        tiny_model(), args, train_dataset=prompts, processing_class=tokenizer, reward_funcs=first_token_parity
    )
    assert not any(hasattr(trainer.model, name) for name in ("world_model", "return_normalizer"))
    assert {id(p) for p in trainer._clip_groups()[0]} == {id(p) for p in trainer.mtp_model.heads.parameters()}
    trainer.train()
    assert not [k for h in trainer.state.log_history for k in h if "wm" in k]


def test_world_model_trainer_clips_world_model_and_critic_with_the_heads(wm_trainer):
    trainer = wm_trainer()
    model = trainer.model
    expected = {
        id(p)
        for module in (trainer.mtp_model.heads, model.world_model, model.value_head)
        for p in module.parameters()
        if p.requires_grad
    }
    assert {id(p) for p in trainer._clip_groups()[0]} == expected
    assert not expected & {id(p) for p in trainer._clip_groups()[1]}
    with pytest.raises(ValueError, match="WorldModelPPOTrainer needs a WorldModelPPOConfig"):
        WorldModelPPOTrainer(
            trainer.mtp_model,
            MTPPPOConfig(output_dir="x"),
            train_dataset=trainer.train_dataset,
            processing_class=trainer.processing_class,
            reward_funcs=first_token_parity,
        )


@pytest.mark.parametrize(
    "argv, yaml_text, world",
    [
        (["--mode", "coupled", "--max_steps", "3"], None, False),
        (["--wm_critic", "scalar"], None, True),
        (["--world_model=true"], None, True),
        (["--max_steps", "3"], "wm_imagination_horizon: 0\nmax_steps: 2\n", True),
        (["--max_steps", "3"], "max_steps: 2\n", False),
    ],
)
def test_cli_selects_the_world_model_trainer(argv, yaml_text, world, tmp_path):
    """`trl-mtp ppo`: any `--world_model` / `--wm_*` option, on the command line or in the `--config` YAML, selects
    world-model PPO; anything else is plain PPO."""
    from trl_mtp.commands.ppo import given_fields
    from trl_mtp.trainers.world_model_ppo_config import selects_world_model

    if yaml_text is not None:
        (tmp_path / "run.yaml").write_text(yaml_text)
        argv = [*argv, "--config", str(tmp_path / "run.yaml")]
    assert selects_world_model(given_fields(argv)) == world


def test_cli_help_lists_world_model_fields_only_for_world_model_ppo():
    def help_text(*extra):
        done = subprocess.run(
            [sys.executable, "-m", "trl_mtp.cli", "ppo", *extra, "--help"],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "--wm_critic" not in help_text() and "--wm_critic" in help_text("--world_model", "true")


@pytest.mark.slow
def test_cli_world_model_every_part_on(tmp_path):
    """`trl-mtp ppo` on the embedded default with every world-model part switched on trains end to end."""
    cli = os.path.join(os.path.dirname(sys.executable), "trl-mtp")
    cmd = [
        cli,
        "ppo",
        "--output_dir",
        str(tmp_path / "out"),
        "--max_steps",
        "3",
        "--response_length",
        "6",
        "--per_device_train_batch_size",
        "4",
        "--pretrain_steps",
        "20",
        "--num_eval_examples",
        "4",
        "--num_train_examples",
        "16",
        "--logging_steps",
        "1",
        "--head_type",
        "sequential",
        "--world_model",
        "true",
        "--wm_gradient",
        "coupled",
        "--wm_imagination_horizon",
        "4",
        "--wm_critic",
        "twohot",
        "--wm_return_norm",
        "percentile",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "copy eval exact-match" in done.stdout
    assert (tmp_path / "out" / "world_model.safetensors").is_file()
    for metric in ("wm/latent_cos_depth_1", "wm/imagined_return", "wm/return_scale", "loss/wm_slow_critic"):
        assert metric in done.stdout + done.stderr, metric


def test_a_module_missing_from_the_gathered_state_dict_is_refused_at_save(tmp_path):
    """Under FSDP / ZeRO-3 `_save` writes each world-model module from the gathered state dict (`sub_state` of its
    prefix): a module with state whose prefix is missing there is refused with a one-line error, not written as
    nothing (the former save wrote a file without it); a module without state, and a gathered module, are written."""
    from safetensors.torch import load_file

    from trl_mtp.trainers.ppo_trainer import save_states, sub_state

    modules = {"world_model": torch.nn.Linear(2, 2), "stateless": torch.nn.ReLU()}
    path = str(tmp_path / "world_model.safetensors")
    gathered = {"policy.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match=r"world_model.safetensors: .* no tensors for 'world_model'$"):
        save_states(path, modules, {name: sub_state(gathered, f"{name}.") for name in modules})
    assert not os.path.exists(path)
    gathered = {f"world_model.{k}": v + 1 for k, v in modules["world_model"].state_dict().items()}
    save_states(path, modules, {name: sub_state(gathered, f"{name}.") for name in modules})
    assert torch.equal(load_file(path)["world_model.weight"], modules["world_model"].weight.detach() + 1)
