"""Speculative rollouts for the RL trainers (PPO, GRPO, RLOO): the heads draft, the policy verifies.

`SpeculativeRollouts.speculative_rollout` samples with `MTPForCausalLM.speculative_generate`, which is lossless
(greedy: the tokens `generate` gives; sampling: the same distribution, by speculative rejection sampling), and logs
the acceptance as `spec/*`. PPO calls it from `generate_rollouts`. GRPO and RLOO reach it through
`TRLSpeculativeSampling.speculative_completions`, which stands in for the body of TRL's transformers generation path
(`_generate_single_turn`, the narrowest seam: everything around it, rewards, advantages, tools, logging, stays
TRL's) and returns what that path returns: each row's completion tokens up to and including its first EOS.
"""

from __future__ import annotations

import torch
from accelerate.utils import DistributedType
from transformers import GenerationConfig
from trl.extras.profiling import profiling_context
from trl.models import unwrap_model_for_generation
from trl.trainer.utils import pad

from trl_mtp.adaptive_drafting import DraftPlanner
from trl_mtp.decoding import generation_settings
from trl_mtp.trainers.ppo_models import dropout_in


def log_speculation(metrics: dict, stats: dict) -> None:
    """Append one rollout's acceptance statistics to a trainer's metric lists (averaged by the trainer's `log`)."""
    metrics["spec/mean_accepted_length"].append(stats["mean_accepted_length"])
    for i, rate in enumerate(stats["acceptance_by_position"], start=1):
        metrics[f"spec/acceptance_pos_{i}"].append(rate)
    for i, rate in enumerate(stats["acceptance_by_depth"], start=1):
        metrics[f"spec/acceptance_depth_{i}"].append(rate)
    metrics["spec/draft_tokens"].append(stats["draft_tokens"])
    metrics["spec/tokens_per_s"].append(stats["tokens_per_s"])


def completions_through_eos(completions: torch.Tensor, eos_token_ids: list[int]) -> list[list[int]]:
    """Each row of `completions` [B, L] up to and including its first EOS (the whole row when it has none): TRL's
    completion ids, whose mask TRL rebuilds from their lengths."""
    is_eos = torch.isin(completions, torch.tensor(eos_token_ids, dtype=completions.dtype, device=completions.device))
    before_or_at_first_eos = (is_eos.long().cumsum(1) - is_eos.long()) == 0
    return [row[keep].tolist() for row, keep in zip(completions.cpu(), before_or_at_first_eos.cpu(), strict=True)]


class SpeculativeRollouts:
    """Mixed into an RL trainer that has `mtp_model`, `args` (`speculative_rollouts`, `adaptive_draft_tokens`) and
    TRL's `_metrics[mode]` lists."""

    draft_planner: DraftPlanner | None = None

    def _refuse_unsupported_speculation(self) -> None:
        """One-line refusal, at set-up, of a sharded engine that gathers parameters around every forward (FSDP,
        FSDP2; DeepSpeed ZeRO-3 unless `ds3_gather_for_generation` gathers them once for the whole rollout, GRPO and
        RLOO only): rows accept different numbers of drafts, so ranks run different numbers of forwards, and
        `speculative_generate` has no `synced_gpus`: a rank would wait in an all-gather the others never join."""
        if not self.args.speculative_rollouts:
            return
        engine = self.accelerator.distributed_type
        if engine == DistributedType.FSDP:
            sharded = "FSDP"
        elif engine == DistributedType.DEEPSPEED and not getattr(self.args, "ds3_gather_for_generation", False):
            config = self.accelerator.state.deepspeed_plugin.deepspeed_config
            sharded = "DeepSpeed ZeRO-3" if config.get("zero_optimization", {}).get("stage") == 3 else None
        else:
            sharded = None
        if sharded:
            raise ValueError(
                f"speculative_rollouts=True under {sharded}: ranks run different numbers of forwards while drafting, "
                "and the engine's per-forward all-gathers would hang; use DDP or ZeRO-2 (GRPO and RLOO: or ZeRO-3 "
                "with ds3_gather_for_generation=True)"
            )

    def speculative_rollout(
        self,
        queries: torch.Tensor,
        query_mask: torch.Tensor,
        generation_config: GenerationConfig,
        mode: str = "train",
    ) -> torch.Tensor:
        """[B, T + longest completion] sequences for left-padded `queries` [B, T], laid out as `generate` lays them
        out, sampled from `generation_config` with the heads drafting; logs `spec/*` under `mode`. With
        `adaptive_draft_tokens`, one planner per process (not saved in checkpoints) chooses every round's number of
        drafts for the whole run."""
        if self.args.adaptive_draft_tokens and self.draft_planner is None:
            self.draft_planner = DraftPlanner(self.mtp_model.heads.num_depths)
        base = self.mtp_model.base_model
        was_training = base.training  # speculative_generate restores the wrapper's flag, not the trained tree's
        try:
            sequences, stats = self.mtp_model.speculative_generate(
                queries,
                query_mask,
                max_new_tokens=generation_config.max_new_tokens,
                generation_config=generation_config,
                # the flag, not the planner's existence: it may be turned off mid-run (the planner is then kept)
                adaptive_draft_tokens=self.draft_planner if self.args.adaptive_draft_tokens else False,
            )
        finally:
            base.train(was_training)
        log_speculation(self._metrics[mode], stats)
        return sequences


class TRLSpeculativeSampling(SpeculativeRollouts):
    """For TRL's GRPO and RLOO trainers: their `_generate_single_turn` calls `speculative_completions` when
    `speculative_rollouts` is on (read at every call: the `stop_speculation` alarm turns it off mid-run)."""

    def _refuse_unsupported_speculation(self) -> None:
        """One-line refusals, at set-up, of what speculative rollouts cannot honour (the config refuses vLLM and
        continuous batching; the shared refusals first): a rollout_func (it bypasses the generation path, so nothing
        would speculate), a vision model, generation settings the verifier cannot apply position by position, and
        dropout in the policy: TRL samples in train mode, with dropout, `speculative_generate` in eval mode, without,
        so the rollouts' distribution would differ."""
        super()._refuse_unsupported_speculation()
        if not self.args.speculative_rollouts:
            return
        rollout_func = getattr(self, "rollout_func", None) is not None
        if rollout_func or self._is_vlm:
            what = "a rollout_func" if rollout_func else "a vision-language model"
            raise ValueError(f"speculative_rollouts=True with {what}: only TRL's text `generate` path speculates")
        dropout = dropout_in(self.mtp_model.base_model)
        if dropout is not None:
            fix = "set disable_dropout=True" if not self.args.disable_dropout else "set it to 0 in the model config"
            raise ValueError(
                f"speculative_rollouts=True with dropout in the policy ({dropout}): TRL samples in train mode, with "
                f"dropout, speculative rollouts in eval mode, without; {fix}"
            )
        ids = torch.zeros((1, 1), dtype=torch.long, device=self.accelerator.device)
        try:  # the checks speculative_generate makes, now instead of at the first rollout
            generation_settings(
                self.mtp_model.base_model, ids, torch.ones_like(ids), self.max_completion_length, self.generation_config
            )
        except ValueError as err:
            raise ValueError(f"speculative_rollouts=True with this generation config: {err}") from err

    @torch.no_grad()
    def speculative_completions(self, prompt_ids: list[list[int]]) -> list[list[int]]:
        """Completion ids for `prompt_ids` (one row per completion: TRL's sampler already repeats each prompt
        `num_generations` times), left-padded and unwrapped as TRL's transformers path does it."""
        mode = "train" if self.model.training else "eval"
        prompts = [torch.tensor(ids) for ids in prompt_ids]
        pad_id, multiple = self._tokenizer.pad_token_id, self.pad_to_multiple_of
        input_ids = pad(prompts, padding_value=pad_id, padding_side="left", pad_to_multiple_of=multiple)
        mask = pad([torch.ones_like(p) for p in prompts], padding_side="left", pad_to_multiple_of=multiple)
        input_ids, mask = input_ids.to(self.accelerator.device), mask.to(self.accelerator.device)
        with (
            profiling_context(self, "speculative_generate"),
            unwrap_model_for_generation(
                self.model_wrapped,
                self.accelerator,
                gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                generation_kwargs=self.generation_kwargs,
                gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs,
            ),  # no FSDP parameter summoning: speculative rollouts are refused under FSDP at set-up
        ):
            sequences = self.speculative_rollout(input_ids, mask, self.generation_config, mode=mode)
        return completions_through_eos(sequences[:, input_ids.size(1) :], self.eos_token_ids)
