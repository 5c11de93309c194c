"""What the heads learn from during RL: the sample filter keeps exactly the positive-advantage samples, and the
adaptive MTP weight is the clipped projection of the policy's trunk gradient on the MTP loss's."""

from __future__ import annotations

import types

import pytest
import torch

from trl_mtp import MTPConfig, MTPForCausalLM, MTPPPOTrainer
from trl_mtp.embedded.tasks.registry import get_task
from trl_mtp.losses import IGNORE_INDEX
from trl_mtp.trainers import mtp_targets, ppo_trainer
from trl_mtp.trainers.mtp_mixin import MTPTrainerMixin
from trl_mtp.trainers.mtp_targets import adaptive_lambda, filter_mtp_labels, sample_advantages, trunk_gradients
from trl_mtp.trainers.ppo_trainer import Rollouts


# -- the sample filter --------------------------------------------------------------------------------------------
def test_sample_advantage_is_the_scalar_or_the_masked_token_mean():
    assert sample_advantages(torch.tensor([0.5, -1.0])).tolist() == [0.5, -1.0]
    per_token = torch.tensor([[1.0, 3.0, 100.0], [-2.0, 1.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    # row 0: (1 + 3) / 2 (the padded 100 is not the sample's); row 1: (-2 + 1 + 0) / 3
    assert sample_advantages(per_token, mask).tolist() == pytest.approx([2.0, -1.0 / 3.0])
    with pytest.raises(ValueError, match="need their mask"):
        sample_advantages(per_token)


def test_positive_advantage_ignores_every_token_of_the_other_samples():
    labels = torch.arange(12).reshape(3, 4)
    advantages = torch.tensor([0.7, 0.0, -0.3])  # 0 is not positive
    kept = filter_mtp_labels(labels, advantages, "positive_advantage")
    assert kept[0].tolist() == labels[0].tolist()
    assert (kept[1:] == IGNORE_INDEX).all()
    assert filter_mtp_labels(labels, advantages, "all") is labels
    with pytest.raises(ValueError, match="mtp_sample_filter='best'"):
        filter_mtp_labels(labels, advantages, "best")


def heads_loss(model: MTPForCausalLM, input_ids, labels) -> torch.Tensor:
    model(input_ids=input_ids)  # the forward whose trunk states the heads read
    return model.compute_mtp_loss(input_ids, labels).loss


def test_only_positive_samples_reach_the_heads_loss(tiny_model, monkeypatch):
    """The heads' loss on a batch filtered to its positive-advantage samples is the loss of those samples alone; a
    filter that keeps every sample (the broken one) gives another value."""
    torch.manual_seed(0)
    model = MTPForCausalLM.from_base(tiny_model(), MTPConfig(num_mtp_heads=2, mode="decoupled"))
    input_ids = torch.randint(5, 40, (4, 9))
    labels = input_ids.clone()
    labels[:, :3] = IGNORE_INDEX  # the prompt
    advantages = torch.tensor([1.5, -0.5, 0.2, -2.0])
    positive = advantages > 0

    def filtered_loss():
        return heads_loss(model, input_ids, mtp_targets.filter_mtp_labels(labels, advantages, "positive_advantage"))

    alone = heads_loss(model, input_ids[positive], labels[positive])
    assert filtered_loss().item() == pytest.approx(alone.item(), rel=1e-6)
    monkeypatch.setattr(mtp_targets, "filter_mtp_labels", lambda labels, *args: labels)  # keeps every sample
    assert filtered_loss().item() != pytest.approx(alone.item(), rel=1e-3)


def test_ppo_heads_learn_from_positive_samples_only(tiny_model, tokenizer, ppo_args, monkeypatch):
    """PPO's MTP term on a hand-built batch: with the filter, it equals the term of the positive-advantage rows
    alone (a sample's advantage: the mean over its response tokens); with the filter bypassed it does not."""
    trainer = MTPPPOTrainer(
        tiny_model(),
        args=ppo_args(mode="decoupled", mtp_sample_filter="positive_advantage"),
        train_dataset=get_task("copy", length=3).train(8),
        processing_class=tokenizer,
        reward_funcs=lambda completions, **kw: [0.0] * len(completions),
    )
    torch.manual_seed(0)
    B, C, R = 4, 3, 4
    query_responses = torch.randint(5, 40, (B, C + R))
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.bool)
    # sample means over the real tokens: 0.5, -1.0 (the padded +9 does not count), -0.25, 1/3
    advantages = torch.tensor([[1.0, 1.0, 0.0, 0.0], [-1.0, -1.0, 9.0, 9.0], [1.0, -2.0, 0.0, 0.0], [1.0, 0.0, 0.0, 5]])
    zeros = torch.zeros(B, R)
    batch = Rollouts(
        query_responses=query_responses,
        attention_mask=torch.cat([torch.ones(B, C, dtype=torch.long), mask.long()], 1),
        responses=query_responses[:, C:],
        mask=mask,
        logprobs=zeros,
        ref_logprobs=zeros,
        values=zeros,
        scores=torch.zeros(B),
        advantages=advantages,
        returns=zeros,
    )
    model = trainer.accelerator.unwrap_model(trainer.model)

    def mtp_term(rows) -> float:
        return trainer.compute_losses(model, batch[rows])[0]["mtp"].item()

    everything, positive = torch.arange(B), torch.tensor([0, 3])
    assert mtp_term(everything) == pytest.approx(mtp_term(positive), rel=1e-5)
    monkeypatch.setattr(ppo_trainer, "filter_mtp_labels", lambda labels, *args: labels)  # the filter bypassed
    assert mtp_term(everything) != pytest.approx(mtp_term(positive), rel=1e-3)


# -- the adaptive coefficient -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "alignment, mtp_sq_norm, ceiling, expected",
    [
        (2.0, 4.0, 1.0, 0.5),  # the projection 2 / 4, under the ceiling
        (10.0, 2.0, 0.3, 0.3),  # 5, capped by the configured lambda
        (-1.0, 4.0, 1.0, 0.0),  # the MTP gradient points against the policy's: no weight
        (3.0, 0.0, 1.0, 0.0),  # no MTP gradient at all
    ],
)
def test_adaptive_lambda_by_hand(alignment, mtp_sq_norm, ceiling, expected):
    assert adaptive_lambda(alignment, mtp_sq_norm, ceiling) == pytest.approx(expected)


def hidden_and_losses(sign: float = 1.0):
    """h = (1, 2): L_rl = 3 h0 + h1 has gradient (3, 1); L_mtp = sign * h0^2 has gradient (2 sign, 0)."""
    hidden = torch.tensor([[[1.0, 2.0]]], requires_grad=True)
    return hidden, 3 * hidden[..., 0].sum() + hidden[..., 1].sum(), sign * (hidden[..., 0] ** 2).sum()


def test_trunk_gradients_by_hand():
    hidden, policy_loss, mtp_loss = hidden_and_losses()
    alignment, mtp_sq_norm = trunk_gradients(policy_loss, mtp_loss, hidden)
    assert (alignment.item(), mtp_sq_norm.item()) == (6.0, 4.0)  # <(3, 1), (2, 0)> and ||(2, 0)||^2
    (policy_loss + mtp_loss).backward()  # the graph is kept for the real backward
    assert hidden.grad.tolist() == [[[5.0, 1.0]]]
    assert trunk_gradients(policy_loss.detach(), mtp_loss.detach(), hidden)[1].item() == 0.0


@pytest.mark.parametrize("sign, ceiling, expected", [(1.0, 1.0, 1.0), (1.0, 2.0, 1.5), (-1.0, 2.0, 0.0)])
def test_trainer_sets_the_adaptive_weight_from_the_trunk_gradients(sign, ceiling, expected):
    """The trainer's weight is 6 / 4 = 1.5 on the hand-made losses, capped by the ceiling, 0 when opposed."""
    hidden, policy_loss, mtp_loss = hidden_and_losses(sign)
    trainer = types.SimpleNamespace(
        mtp_model=types.SimpleNamespace(trunk=types.SimpleNamespace(hidden=hidden)),
        accelerator=types.SimpleNamespace(reduce=lambda tensor, reduction: tensor),
    )
    assert MTPTrainerMixin._adaptive_lambda(trainer, policy_loss, mtp_loss, ceiling) == pytest.approx(expected)


def first_token_parity(completion_ids, **kwargs):
    """A reward an untrained policy gets half the time: some advantages are positive, some not."""
    return [float(ids[0] % 2) for ids in completion_ids]


@pytest.mark.slow
def test_grpo_heads_see_the_filtered_labels_and_the_adaptive_weight(tiny_model, tokenizer, tmp_path, monkeypatch):
    """GRPO, coupled, with the filter and the adaptive weight: the labels the heads' loss gets are the completion
    labels with every non-positive-advantage sample ignored, and the logged weight stays within [0, mtp_lambda]."""
    from trl_mtp import MTPGRPOConfig, MTPGRPOTrainer
    from trl_mtp.trainers import mtp_mixin

    seen = []  # (advantages, labels before the filter, labels the heads' loss got)
    filter_in = {}

    def spy_filter(labels, advantages, sample_filter, mask=None):
        filter_in.update(advantages=advantages.clone(), labels=labels.clone())
        return filter_mtp_labels(labels, advantages, sample_filter, mask)

    def spy_add(self, loss, inputs, **kwargs):
        seen.append((filter_in["advantages"], filter_in["labels"], inputs["labels"].clone()))
        return original_add(self, loss, inputs, **kwargs)

    original_add = mtp_mixin.MTPTrainerMixin.add_mtp_loss
    monkeypatch.setattr(mtp_mixin, "filter_mtp_labels", spy_filter)
    monkeypatch.setattr(mtp_mixin.MTPTrainerMixin, "add_mtp_loss", spy_add)
    args = MTPGRPOConfig(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=6,
        generation_batch_size=8,
        learning_rate=1e-3,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        dataloader_pin_memory=False,
        disable_tqdm=True,
        num_mtp_heads=2,
        mode="coupled",
        mtp_lambda=0.5,
        mtp_lambda_schedule="adaptive",
        mtp_sample_filter="positive_advantage",
    )
    trainer = MTPGRPOTrainer(
        tiny_model(),
        reward_funcs=first_token_parity,
        args=args,
        train_dataset=get_task("copy", length=2, max_value=9).train(16),
        processing_class=tokenizer,
    )
    trainer.train()
    assert seen, "the heads' loss never ran"
    for advantages, before, after in seen:
        positive = advantages > 0
        assert torch.equal(after[positive], before[positive])
        assert (after[~positive] == IGNORE_INDEX).all()
    assert any((a > 0).any() and (a <= 0).any() for a, _, _ in seen), "no batch mixed kept and dropped samples"
    lambdas = [h["mtp/lambda"] for h in trainer.state.log_history if "mtp/lambda" in h]
    assert lambdas and all(0.0 <= v <= 0.5 for v in lambdas)
