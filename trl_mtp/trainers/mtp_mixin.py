"""What every trl-mtp trainer adds to its TRL parent, in one place.

One module tree: the trainer trains the base model with the heads attached as its submodule `mtp_heads`, so the
optimizer, DDP/FSDP/DeepSpeed (through accelerate), gradient clipping and checkpoint resume see one model. The
heads read the trunk through the capture hooks of `MTPForCausalLM` (no second trunk forward): the parent trainer
runs its own forward (TRL's fused LM head included), then `mtp_loss_term` scores the heads on what that forward
produced.

Saved layout (checkpoints and the final model alike) is the `MTPForCausalLM.save_pretrained` layout: the base
model's files without the head weights (`_keys_to_ignore_on_save`), `mtp_heads.safetensors` and
`mtp_config.json`, so `MTPForCausalLM.from_pretrained(output_dir)` loads a trained run.
"""

from __future__ import annotations

import logging
import os

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from trl_mtp.losses import depth_weights
from trl_mtp.model import CONFIG_FILE, MTPForCausalLM
from trl_mtp.schedules import MTPStepPlan
from trl_mtp.trainers.mtp_alarms import MTPAlarmCallback
from trl_mtp.trainers.mtp_args import MTPArguments
from trl_mtp.trainers.mtp_targets import adaptive_lambda, filter_mtp_labels, trunk_gradients

logger = logging.getLogger(__name__)

HEADS_MODULE = "mtp_heads"  # name of the heads inside the trained module tree

# what a trainer's `model` may be: a path or hub id, a base model (new heads), an MTP model (its trained heads)
ModelSource = str | os.PathLike | PreTrainedModel | MTPForCausalLM


def load_mtp_model(model: ModelSource, args: MTPArguments) -> MTPForCausalLM:
    """`model` (an `MTPForCausalLM`, a `PreTrainedModel`, or a path / hub id) as an `MTPForCausalLM`.

    A path holding an MTP checkpoint, or an `MTPForCausalLM`, keeps its trained heads (their architecture fields);
    how they are trained (`mode`, targets, weights: `LOSS_FIELDS`) always comes from `args`. Anything else gets new
    heads built from the MTP fields of `args`."""
    torch.manual_seed(args.seed)  # new heads, and the modules the trainer builds next, from the run's seed
    if isinstance(model, MTPForCausalLM):
        return _train_with(model, args)
    if isinstance(model, PreTrainedModel):
        return MTPForCausalLM.from_base(model, args.mtp_config())
    if not isinstance(model, (str, os.PathLike)):
        raise ValueError(
            f"model={type(model).__name__}: expected a path, a hub id, a PreTrainedModel or an MTPForCausalLM"
        )
    init_kwargs = dict(args.model_init_kwargs or {})
    if os.path.isfile(os.path.join(model, CONFIG_FILE)):
        return _train_with(MTPForCausalLM.from_pretrained(model, **init_kwargs), args, source=model)
    if not os.path.exists(model) and (os.path.isabs(model) or str(model).startswith(".")):
        raise FileNotFoundError(f"model={model!r}: no such directory")
    try:
        base = AutoModelForCausalLM.from_pretrained(model, **init_kwargs)
    except OSError as err:  # no such local folder, and the hub can't provide it (offline, or a typo)
        raise FileNotFoundError(
            f"model={model!r}: not a local model directory and not loadable from the hub ({err})"
        ) from err
    return MTPForCausalLM.from_base(base, args.mtp_config())


def _train_with(mtp_model: MTPForCausalLM, args: MTPArguments, source=None) -> MTPForCausalLM:
    """Trained heads keep what they are; the run's arguments say how they are trained."""
    wanted = args.mtp_config()
    mtp_model.set_loss_config(wanted)
    if mtp_model.mtp_config != wanted:
        logger.warning(
            "%s has trained heads (%s, D=%d): they are kept, not rebuilt from the arguments' head fields",
            source or "the model",
            mtp_model.mtp_config.head_type,
            mtp_model.mtp_config.num_mtp_heads,
        )
    return mtp_model


def split_heads(state_dict: dict | None) -> tuple[dict | None, dict | None]:
    """(the heads' tensors, keys relative to the heads; every other entry) of a state dict of the trained module tree
    (the heads under `mtp_heads`, at any depth: a PEFT model nests the base); (None, None) for None."""
    if state_dict is None:
        return None, None
    prefix = f"{HEADS_MODULE}."
    heads = {k.split(prefix, 1)[1]: v for k, v in state_dict.items() if prefix in k}
    return heads, {k: v for k, v in state_dict.items() if prefix not in k}


class MTPTrainerMixin:
    """Mixed in before a TRL trainer: `class MTPSFTTrainer(MTPTrainerMixin, SFTTrainer)`."""

    mtp_model: MTPForCausalLM
    config_class: type  # the config the trainer takes (its MTP fields and TRL's); set by each trainer
    default_output_dir: str  # where a trainer built with args=None writes

    # -- set-up ----------------------------------------------------------------------------------------------
    @classmethod
    def _checked_args(cls, args: MTPArguments | None) -> MTPArguments:
        """The trainer's config: `args`, or the config class's defaults for None. Any other class is refused with
        one line naming it, before a model is loaded (a TRL config lacks the MTP fields; another method's config
        would train with the wrong loss)."""
        if args is None:
            return cls.config_class(output_dir=cls.default_output_dir)
        if not isinstance(args, cls.config_class):
            raise ValueError(f"args={type(args).__name__}: {cls.__name__} needs a {cls.config_class.__name__}")
        return args

    def _prepare_mtp_model(self, model: ModelSource, args: MTPArguments, peft_config=None) -> PreTrainedModel:
        """Resolve `model`, attach its heads to the base as `mtp_heads`; returns the base for the TRL parent."""
        self.mtp_model = load_mtp_model(model, args)
        base = self.mtp_model.base_model
        base.add_module(HEADS_MODULE, self.mtp_model.heads)
        # the heads are saved in their own file: keep them out of the base model's weights
        head_keys = {f"{HEADS_MODULE}.{k}" for k in self.mtp_model.heads.state_dict()}
        base._keys_to_ignore_on_save = set(base._keys_to_ignore_on_save or ()) | head_keys
        if args.freeze_base:
            for name, param in base.named_parameters():
                param.requires_grad_(name.startswith(f"{HEADS_MODULE}."))
        if peft_config is not None and self._lora_would_reach_heads(peft_config):
            # LoRA goes on the trunk only; the heads are trained in full (their layers share the trunk's names)
            exclude = getattr(peft_config, "exclude_modules", None)
            pattern = rf".*\b{HEADS_MODULE}\b.*"
            if exclude is None:
                peft_config.exclude_modules = pattern
            elif isinstance(exclude, str):
                peft_config.exclude_modules = f"(?:{exclude})|(?:{pattern})"
            else:
                raise ValueError(
                    f"peft_config.exclude_modules={exclude!r}: give a regex string (trl-mtp adds the heads to it)"
                )
        return base

    def _lora_would_reach_heads(self, peft_config) -> bool:
        """Whether `peft_config`'s target modules match a module of the heads (PEFT's own matching)."""
        from peft.tuners.tuners_utils import check_target_module_exists

        if getattr(peft_config, "target_modules", None) == "all-linear":
            return True
        return any(
            check_target_module_exists(peft_config, f"{HEADS_MODULE}.{name}")
            for name, _ in self.mtp_model.heads.named_modules()
            if name
        )

    def _after_parent_init(self) -> None:
        """PEFT freezes every non-adapter parameter: the heads stay trainable."""
        for param in self.mtp_model.heads.parameters():
            param.requires_grad_(True)
        self._refuse_unsupported_engine_modes()
        if getattr(self.args, "mtp_alarms", False):
            alarms = MTPAlarmCallback(
                self.args.alarm_acceptance_drop,
                self.args.alarm_entropy_fraction,
                self.args.alarm_grad_norm_ratio,
                self.args.alarm_action,
                respond=self.respond_to_alarm,
            )
            # first: the printer and the reporting callbacks then see the alarm metrics it adds to each log
            self.callback_handler.callbacks.insert(0, alarms)

    def respond_to_alarm(self, action: str) -> None:
        """The automatic response of `alarm_action`: stop the MTP loss training the policy, or stop speculating."""
        if action == "decouple":
            self.args.mode = "decoupled"
            self.mtp_model.set_loss_config(self.args.mtp_config())
        elif action == "stop_speculation":
            self.args.speculative_rollouts = False

    # -- the loss ---------------------------------------------------------------------------------------------
    def _current_plan(self, training: bool) -> MTPStepPlan:
        if not training:  # evaluation scores every head with the configured weight
            return MTPStepPlan(mtp_lambda=self.args.mtp_lambda, window=self.args.num_mtp_heads, apply=True)
        return self.args.mtp_step_plan(self.state.global_step, self.state.max_steps)

    def _touch_heads(self) -> torch.Tensor:
        """0 * (sum of the head parameters): under DDP every parameter must receive a gradient each step, also on
        steps where the frequency or the window curriculum leaves some heads out. Elsewhere it is 0: one process
        needs nothing, and FSDP / DeepSpeed reduce parameters without a gradient themselves (and outside their
        forward an FSDP2 head's parameters are sharded DTensors, which would turn the whole loss into one)."""
        from accelerate.utils import DistributedType

        if self.accelerator.distributed_type in (DistributedType.NO, DistributedType.FSDP, DistributedType.DEEPSPEED):
            return torch.zeros((), device=self.mtp_model.device)
        return 0.0 * sum(p.sum() for p in self.mtp_model.heads.parameters() if p.requires_grad)

    def add_mtp_loss(
        self, loss: torch.Tensor, inputs: dict, num_items_in_batch=None, divisor: float = 1.0
    ) -> torch.Tensor:
        """The parent's loss plus the MTP term in training; in evaluation the parent's loss, MTP metrics logged.

        `inputs` needs `input_ids`, `labels` (unshifted, -100 ignored) and optionally `attention_mask` /
        `position_ids`. `divisor`: the parent's own loss scaling for gradient accumulation when it does not pass
        `num_items_in_batch` (GRPO/RLOO divide each micro-batch mean by the accumulation steps)."""
        training = self.model.training
        # the policy loss at the MTP term's scale (before the division by `divisor`), for the adaptive lambda
        term = self.mtp_loss_term(inputs, num_items_in_batch, training=training, policy_loss=loss * divisor) / divisor
        if not training:
            return loss
        loss = loss + term
        if not loss.requires_grad:
            # nothing trainable in this step's loss (frozen base on a step the MTP frequency skips): an empty
            # backward, so that no parameter moves (a zero gradient would still move Adam's momentum)
            loss = loss.detach().requires_grad_()
        return loss

    def mtp_loss_term(
        self, inputs: dict, num_items_in_batch=None, training: bool = True, policy_loss: torch.Tensor | None = None
    ) -> torch.Tensor:
        """lambda * MTP loss for the batch the parent trainer just ran forward, and its metrics.

        Scaled like TRL scales its own loss: divided by `num_items_in_batch` (gradient accumulation) and multiplied
        by the number of processes when tokens are averaged across devices. `policy_loss` (graph attached, at the
        MTP loss's scale) is what the adaptive lambda schedule balances the MTP loss against."""
        mode = "train" if training else "eval"
        plan = self._current_plan(training)
        metrics = self._metrics[mode]
        metrics["mtp/window"].append(float(plan.window))
        metrics["mtp/applied"].append(float(plan.apply))
        touch = self._touch_heads()
        if not plan.apply:
            metrics["mtp/lambda"].append(plan.mtp_lambda)
            return touch
        out = self.mtp_model.compute_mtp_loss(
            inputs["input_ids"],
            inputs["labels"],
            inputs.get("attention_mask"),
            inputs.get("position_ids"),
            num_depths=plan.window,
            num_items_in_batch=num_items_in_batch,
        )
        self._log_mtp_metrics(mode, out, plan.window)
        mtp_lambda = plan.mtp_lambda
        if training and policy_loss is not None and self._adaptive_lambda_applies():
            mtp_lambda = self._adaptive_lambda(policy_loss, out.loss, ceiling=plan.mtp_lambda)
        metrics["mtp/lambda"].append(mtp_lambda)
        term = mtp_lambda * out.loss
        if num_items_in_batch is not None and getattr(self.args, "average_tokens_across_devices", False):
            term = term * self.accelerator.num_processes
        return (term if training else term.detach()) + touch

    def _adaptive_lambda_applies(self) -> bool:
        return self.args.mtp_lambda_schedule == "adaptive" and self.args.mode == "coupled"

    def _adaptive_lambda(self, policy_loss: torch.Tensor, mtp_loss: torch.Tensor, ceiling: float) -> float:
        """The adaptive weight of `trl_mtp.trainers.mtp_targets`, from both losses' gradients on the trunk's hidden
        state, summed over processes (every process then uses the same weight)."""
        alignment, mtp_sq_norm = trunk_gradients(policy_loss, mtp_loss, self.mtp_model.trunk.hidden)
        sums = self.accelerator.reduce(torch.stack([alignment, mtp_sq_norm]), reduction="sum")
        return adaptive_lambda(sums[0].item(), sums[1].item(), ceiling)

    @staticmethod
    def completion_mtp_inputs(prompt_ids, prompt_mask, completion_ids, completion_mask) -> dict:
        """MTP inputs of a rollout batch (TRL's on-policy layout: left-padded prompts, right-padded completions):
        the heads learn the completion tokens only."""
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        labels = torch.cat(
            [torch.full_like(prompt_ids, -100), completion_ids.masked_fill(completion_mask == 0, -100)], 1
        )
        return {
            "input_ids": input_ids,
            "labels": labels,
            "attention_mask": torch.cat([prompt_mask, completion_mask], 1),
        }

    def _log_mtp_metrics(self, mode: str, out, window: int) -> None:
        """Token-weighted per-depth means over all processes, appended to TRL's metric lists (logged by `log`)."""
        counts = out.num_tokens.float()
        sums = torch.stack([out.losses * counts, out.accuracies * counts, out.entropies * counts, counts])
        sums = self.accelerator.gather_for_metrics(sums.unsqueeze(0)).sum(0)  # [4, window]
        n = sums[3].clamp(min=1)
        loss, acc, entropy = sums[0] / n, sums[1] / n, sums[2] / n
        metrics = self._metrics[mode]
        for i in range(window):
            metrics[f"mtp/loss_depth_{i + 1}"].append(loss[i].item())
            metrics[f"mtp/acc_depth_{i + 1}"].append(acc[i].item())
            metrics[f"mtp/entropy_depth_{i + 1}"].append(entropy[i].item())
        weights = depth_weights(window, self.args.mtp_depth_decay, self.args.mtp_normalize_depth_weights)
        metrics["mtp/loss"].append((weights.to(loss.device) * loss).sum().item())

    # -- gradient clipping ---------------------------------------------------------------------------------------
    def _auxiliary_modules(self) -> list:
        """Modules trained beside the policy (the heads; world-model PPO adds its world model and critic): clipped on
        their own norm."""
        return [self.mtp_model.heads]

    def _clip_groups(self) -> tuple[list, list]:
        """(auxiliary parameters, every other trainable parameter), for clipping each group on its own norm."""
        if not hasattr(self, "_clip_groups_cache"):
            aux = {id(p) for module in self._auxiliary_modules() for p in module.parameters()}
            params = [p for p in self.model.parameters() if p.requires_grad]
            self._clip_groups_cache = ([p for p in params if id(p) in aux], [p for p in params if id(p) not in aux])
        return self._clip_groups_cache

    def _refuse_unsupported_engine_modes(self) -> None:
        """Combinations with DeepSpeed that would break a guarantee or fail later, refused at set-up:
        - decoupled mode where the engine clips: it clips every gradient on one norm, so the heads would rescale the
          policy's update (decoupled mode's guarantee);
        - decoupled mode under ZeRO-3, whatever the clipping: the heads call the shared LM head and final norm with
          detached parameters (`torch.func.functional_call`), and ZeRO-3's gathering hooks fail on those tensors;
        - a frozen LM head (LoRA, `freeze_base`) under ZeRO-3: the MTP loss recomputes its checkpointed logit chunks in
          backward, and there ZeRO-3 hands the frozen LM head's weight over as an empty partition (CheckpointError).
        A run whose alarm response switches to decoupled mode mid-run is refused like decoupled mode."""
        from accelerate.utils import DistributedType

        if self.accelerator.distributed_type != DistributedType.DEEPSPEED:
            return
        config = self.accelerator.state.deepspeed_plugin.deepspeed_config
        zero3 = config.get("zero_optimization", {}).get("stage") == 3
        if zero3 and not all(p.requires_grad for p in self.mtp_model.trunk.lm_head.parameters()):
            raise ValueError(
                "DeepSpeed ZeRO-3 with a frozen LM head (LoRA or freeze_base): the MTP loss recomputes the LM head "
                "in backward, where ZeRO-3 has released its frozen weight; use ZeRO-2 or FSDP"
            )
        if self.args.mode == "decoupled":
            decoupled = "mode='decoupled'"
        elif getattr(self.args, "mtp_alarms", False) and self.args.alarm_action == "decouple":
            decoupled = "alarm_action='decouple'"
        else:
            return
        if zero3:
            raise ValueError(
                f"{decoupled} with DeepSpeed ZeRO-3: the heads call the LM head with detached parameters, which "
                "ZeRO-3 cannot gather; use ZeRO-2 (gradient_clipping 0), FSDP or DDP"
            )
        clip = config.get("gradient_clipping", 0.0)
        clip = self.args.max_grad_norm if clip == "auto" else clip
        if clip and clip > 0:
            raise ValueError(
                f"{decoupled} with DeepSpeed gradient_clipping={clip}: DeepSpeed clips all gradients "
                "on one norm, so the heads would rescale the policy's update; use FSDP or DDP, or set "
                "gradient_clipping / max_grad_norm to 0"
            )

    def _clip_grad_norm(self, model):
        """Decoupled mode: the heads' and the policy's gradients are clipped on separate norms, so the heads never
        rescale the policy's update (with one global norm they would). Returns the norm over both groups."""
        from accelerate.utils import DistributedType

        if self.accelerator.distributed_type == DistributedType.DEEPSPEED:
            return super()._clip_grad_norm(model)  # the gradients live in the engine; refused at set-up when it clips
        if self.args.mode != "decoupled":
            self._log_grad_norms()  # fp16: before the parent unscales, so both carry the loss scale (ratio exact)
            return super()._clip_grad_norm(model)
        return self.clip_each_group(self.args.max_grad_norm)

    def _log_grad_norms(self) -> None:
        """`mtp/grad_norm_heads` (the heads' parameters) and `mtp/grad_norm_policy` (every trainable parameter
        outside the auxiliary modules), before clipping: what the gradient-norm alarm compares."""
        _, policy = self._clip_groups()
        for name, params in (("heads", list(self.mtp_model.heads.parameters())), ("policy", policy)):
            grads = [p.grad for p in params if p.grad is not None]
            if grads:
                norm = torch.nn.utils.get_total_norm(grads)
                norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
                self._metrics["train"][f"mtp/grad_norm_{name}"].append(norm.item())

    def clip_each_group(self, max_norm: float) -> torch.Tensor:
        """Clip each group of `_clip_groups` on its own norm; returns the norm over both groups. The gradients are
        unscaled once for all groups: fp16's GradScaler refuses a second `unscale_` before the optimizer step, which
        `accelerator.clip_grad_norm_` (it unscales on every call) would make once per group.
        Under FSDP2 the gradients are DTensor shards: torch's `clip_grad_norm_` reduces the squared local sums across
        ranks, so each group's norm is its full norm (returned as a replicated DTensor, read with `full_tensor`)."""
        self.accelerator.unscale_gradients()
        self._log_grad_norms()
        norms = [torch.nn.utils.clip_grad_norm_(group, max_norm) for group in self._clip_groups() if group]
        norms = [n.full_tensor() if hasattr(n, "full_tensor") else torch.as_tensor(n) for n in norms]
        return torch.stack([n.float() for n in norms]).norm()

    # -- save and resume ------------------------------------------------------------------------------------------
    def _save(self, output_dir: str | None = None, state_dict=None):
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        # gathered by FSDP / DeepSpeed ZeRO-3: the heads' full tensors are in it (the modules hold only this rank's
        # shard); they are saved in their own file below. None: the modules' own tensors
        heads, state_dict = split_heads(state_dict)
        super()._save(output_dir, state_dict=state_dict)
        if self.args.should_save:
            self.mtp_model.save_heads(output_dir, state=heads)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model=model)
        # FSDP's own checkpoint holds the whole module tree, heads included, and has just been loaded into the
        # shards (the heads file's full tensors cannot be copied into them); DeepSpeed resumes without this method
        if not self.is_fsdp_enabled:
            self.mtp_model.load_heads(resume_from_checkpoint)


class MTPOnPolicyMixin(MTPTrainerMixin):
    """For TRL's GRPO and RLOO trainers: their `_compute_loss` runs one grad-enabled forward of the policy over
    prompt + completion; the MTP term is added to its (accumulation-scaled) loss."""

    def _compute_loss(self, model, inputs):
        loss = super()._compute_loss(model, inputs)
        mtp_inputs = self.completion_mtp_inputs(
            inputs["prompt_ids"], inputs["prompt_mask"], inputs["completion_ids"], inputs["completion_mask"]
        )
        mtp_inputs["labels"] = filter_mtp_labels(
            mtp_inputs["labels"], inputs["advantages"], self.args.mtp_sample_filter, inputs["completion_mask"]
        )
        divisor = self.current_gradient_accumulation_steps if self.model.training else 1.0
        return self.add_mtp_loss(loss, mtp_inputs, divisor=divisor)
