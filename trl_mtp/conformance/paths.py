"""The conformance paths: what a user does with a checkpoint, each a function that passes, refuses (the path does not
apply to this model, and the reason says why) or fails (it ran and the result is wrong, or it raised).

    from_base     new heads of each family on the base: they run, and the wrapper holds no tensor memory beyond
                  base + heads (+1%), counted over every tensor reachable from it (hooks and copies included)
    sft           two optimizer steps of MTPSFTTrainer: finite losses, heads trained
    greedy        speculative greedy == `generate` greedy, token for token: 3 left-padded rows of different lengths,
                  long enough to cross a tiny sliding window, under the checkpoint's generation config
    sampled       speculative sampling draws the first tokens from `generate`'s distribution (the checkpoint's
                  generation config: temperature, top-k / top-p, repetition penalty, transformers' default top-k 50)
    position_limit  greedy up to the last position the model has (learned positions have no row past it)
    save_load     save_pretrained -> from_pretrained: same heads, same generation config, same tokens
    bf16          speculative greedy and `generate` both run under bf16 autocast (agreement reported, not required:
                  near-ties can flip between a (D+1)-token verify and 1-token steps, see docs/real_models.md)
    native_export sequential heads written as transformers-native MTP layers and read back with the same logits
    stock_use_mtp stock `generate(use_mtp=True)` on the exported layers gives plain `generate`'s tokens

Each path takes a `Subject` (`trl_mtp.conformance.subjects`: the tiny models of real checkpoints' configs, or a user's
checkpoint) and a head family. `cells` lists the (path, family) pairs a subject has, `run_cell` turns a path's outcome
into a `Result` (one cell of the table).
"""

from __future__ import annotations

import contextlib
import gc
import math
import tempfile
import types
from collections.abc import Callable
from dataclasses import dataclass

import torch

from trl_mtp.config import HEAD_TYPES
from trl_mtp.conformance.subjects import (
    GREEDY_LENGTHS,
    D,
    Refused,
    Subject,
    new_heads,
    position_limit,
    room,
    text_config,
)


class Mismatch(Exception):
    """The path ran and its result is wrong; the message says where, in one line."""


@dataclass
class Result:
    """One cell of the conformance table."""

    path: str
    status: str  # "pass" | "refused" | "fail"
    reason: str = ""
    acceptance: float | None = None  # first-draft acceptance of the path's speculative decode, where it ran one
    detail: str = ""


# ----------------------------------------------------------------------------------------------------------------------
# helpers the paths share
# ----------------------------------------------------------------------------------------------------------------------
def first_difference(ours, reference, prompt_len: int, against: str = "generate") -> str | None:
    """Where two outputs part (one line), or None when they are the same."""
    if ours.shape != reference.shape:
        return f"shapes differ: {tuple(ours.shape)} vs {against}'s {tuple(reference.shape)}"
    diff = (ours != reference).nonzero()
    if not len(diff):
        return None
    row, col = diff[0].tolist()
    return (
        f"row {row} differs from {against} at new token {col - prompt_len + 1} "
        f"({int((ours != reference).any(1).sum())} of {ours.size(0)} rows differ)"
    )


def expect_same(ours, reference, prompt_len: int, against="generate", context: str = "") -> None:
    where = first_difference(ours, reference, prompt_len, against)
    if where:
        raise Mismatch(context + where)


def greedy_pair(model, ids, mask, max_new_tokens: int):
    """(speculative greedy tokens, its stats, `generate`'s greedy tokens), the checkpoint's generation config applied
    to both (only `do_sample` and the length set here)."""
    ours, stats = model.speculative_generate(ids, mask, max_new_tokens=max_new_tokens, do_sample=False)
    reference = model.base_model.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False)
    return ours, stats, reference


def placed(device) -> dict:
    """`from_pretrained` keyword arguments that load a model onto `device`."""
    return {} if torch.device(device).type == "cpu" else {"device_map": {"": device}}


def acceptance(stats: dict | None) -> float | None:
    by_position = (stats or {}).get("acceptance_by_position") or []
    return by_position[0] if by_position else None


def _tensor_bytes(tensors) -> int:
    """Bytes of the distinct storages behind `tensors` (views and tied weights counted once)."""
    seen = {}
    for t in tensors:
        storage = t.untyped_storage()
        seen[(storage.data_ptr(), storage.device)] = storage.nbytes()
    return sum(seen.values())


def reachable_tensors(root) -> list[torch.Tensor]:
    """Every tensor reachable from `root` through attributes, containers, bound methods, hooks and closures (not
    through classes, modules or a function's globals, which reach everything)."""
    found, seen, stack = [], set(), [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, (type, types.ModuleType, str, bytes, int, float, bool)) or obj is None:
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            found.append(obj)
            continue
        if isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        elif isinstance(obj, types.MethodType):
            stack.append(obj.__self__)
        elif isinstance(obj, types.FunctionType):
            for cell in obj.__closure__ or ():
                with contextlib.suppress(ValueError):  # an empty cell
                    stack.append(cell.cell_contents)
        elif hasattr(obj, "__dict__"):
            stack.append(vars(obj))
        elif hasattr(obj, "func") and hasattr(obj, "args"):  # functools.partial
            stack.extend([obj.func, obj.args, obj.keywords])
    return found


def held_bytes(model) -> tuple[int, int]:
    """(tensor bytes reachable from the wrapper, bytes of the base's and the heads' own parameters and buffers)."""
    gc.collect()
    own = [
        *model.base_model.parameters(),
        *model.base_model.buffers(),
        *model.heads.parameters(),
        *model.heads.buffers(),
    ]
    return _tensor_bytes(reachable_tensors(model)), _tensor_bytes(own)


# ----------------------------------------------------------------------------------------------------------------------
# the sampling test: probability integral transform of our samples under generate's distribution, then KS
# ----------------------------------------------------------------------------------------------------------------------
def pit_values(probs: torch.Tensor, tokens: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """u = F(x-) + v p(x), v ~ U(0, 1), with tokens ordered by decreasing probability: uniform on [0, 1] exactly when
    each token x was drawn from its row of `probs` [N, V] (randomised PIT of a discrete law); a sampler too flat
    (temperature too high, top-k / top-p ignored) pushes u towards 1, one too sharp towards 0."""
    probs = probs.double().cpu()
    tokens = tokens.cpu()
    order = torch.argsort(-probs, dim=1, stable=True)
    rank = torch.argsort(order, dim=1).gather(1, tokens[:, None]).squeeze(1)
    before = torch.cumsum(probs.gather(1, order), dim=1) - probs.gather(1, order)
    p = probs.gather(1, tokens[:, None]).squeeze(1)
    v = torch.rand(len(tokens), generator=generator, dtype=torch.float64)
    return (before.gather(1, rank[:, None]).squeeze(1) + v * p).clamp(0, 1)


def ks_uniform_pvalue(u: torch.Tensor) -> float:
    """p-value of the Kolmogorov-Smirnov test of `u` against U(0, 1) (Stephens' small-sample correction)."""
    n = len(u)
    u = torch.sort(u.double()).values
    i = torch.arange(1, n + 1, dtype=torch.float64)
    d = float(torch.maximum(i / n - u, u - (i - 1) / n).max())
    lam = (math.sqrt(n) + 0.12 + 0.11 / math.sqrt(n)) * d
    p = 2 * sum((-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 101))
    return min(max(p, 0.0), 1.0)


SAMPLED_ROWS, SAMPLED_TOKENS, SAMPLED_ALPHA = 48, 3, 1e-3


def sampled_against_generate(model, ids, mask, ours, generator) -> tuple[int, torch.Tensor]:
    """For each of our first sampled tokens: its PIT value under the distribution `generate` samples from at that
    prefix (one `generate` step, its processed scores), and how many of them that distribution cannot produce."""
    base, T = model.base_model, ids.size(1)
    eos = base.generation_config.eos_token_id
    eos = torch.tensor(eos if isinstance(eos, list) else [] if eos is None else [eos], device=ours.device)
    u, impossible = [], 0
    for j in range(min(SAMPLED_TOKENS, ours.size(1) - T)):
        live = ~torch.isin(ours[:, T : T + j], eos).any(1)  # rows still generating at new token j
        prefix = ours[live, : T + j]
        prefix_mask = torch.cat([mask[live], mask.new_ones(int(live.sum()), j)], dim=1)
        out = base.generate(
            prefix,
            attention_mask=prefix_mask,
            max_new_tokens=1,
            do_sample=True,
            output_scores=True,
            return_dict_in_generate=True,
        )
        probs = torch.softmax(out.scores[0].double(), dim=-1)
        tokens = ours[live, T + j]
        impossible += int((probs.gather(1, tokens[:, None]) == 0).sum())
        u.append(pit_values(probs, tokens, generator))
    return impossible, torch.cat(u)


# ----------------------------------------------------------------------------------------------------------------------
# the paths
# ----------------------------------------------------------------------------------------------------------------------
def from_base(subject: Subject, family: str) -> dict:
    model = new_heads(subject.new_base(), family)
    held, own = held_bytes(model)  # before any forward: no captured activations yet
    if held > 1.01 * own:
        raise Mismatch(
            f"the wrapper holds {held / 2**20:.2f} MiB of tensors, base + heads own {own / 2**20:.2f} MiB "
            f"({held / own:.1f}x): hidden copies"
        )
    ids, mask = subject.prompts([8], model.device)
    logits = model.mtp_logits(ids, mask)
    V = text_config(model).vocab_size
    if logits.shape[:2] != (D, 1) or logits.size(-1) != V or not torch.isfinite(logits).all():
        raise Mismatch(
            f"mtp_logits {tuple(logits.shape)}, finite={bool(torch.isfinite(logits).all())}: "
            f"expected [{D}, 1, T, {V}] and finite"
        )
    return {"detail": f"{own / 2**20:.2f} MiB"}


def greedy(subject: Subject, family: str) -> dict:
    model = subject.mtp(family)
    ids, mask = subject.prompts(GREEDY_LENGTHS, model.device)
    ours, stats, reference = greedy_pair(model, ids, mask, room(model, ids.size(1), 20))
    expect_same(ours, reference, ids.size(1))
    return {"acceptance": acceptance(stats)}


def sampled(subject: Subject, family: str) -> dict:
    model = subject.mtp(family)
    ids, mask = subject.prompts([6, 9] * (SAMPLED_ROWS // 2), model.device)
    generator = torch.Generator(device=model.device).manual_seed(subject.seed)
    with torch.random.fork_rng(devices=[]):  # generate draws from the global generator: leave the caller's alone
        torch.manual_seed(subject.seed)
        ours, stats = model.speculative_generate(
            ids, mask, max_new_tokens=SAMPLED_TOKENS, do_sample=True, generator=generator
        )
        impossible, u = sampled_against_generate(model, ids, mask, ours, torch.Generator().manual_seed(subject.seed))
    if impossible:
        raise Mismatch(
            f"{impossible} of {len(u)} sampled tokens have probability 0 under generate's distribution "
            "(its top-k / top-p / processors were not applied)"
        )
    p = ks_uniform_pvalue(u)
    if p < SAMPLED_ALPHA:
        raise Mismatch(f"first {SAMPLED_TOKENS} tokens are not generate's distribution (KS p = {p:.1e}, n = {len(u)})")
    return {"acceptance": acceptance(stats), "detail": f"KS p = {p:.2f}, n = {len(u)}"}


POSITION_LIMIT_MAX = 1024  # the path prefills limit - 12 tokens; longer contexts are beyond a quick check


def position_limit_path(subject: Subject, family: str) -> dict:
    model = subject.mtp(family)
    limit = position_limit(model)
    if limit is None:
        raise Refused("the config sets no position limit (max_position_embeddings)")
    if limit > POSITION_LIMIT_MAX:
        raise Refused(f"position limit {limit}: beyond a quick check (at most {POSITION_LIMIT_MAX})")
    new = 12
    ids, mask = subject.prompts([limit - new], model.device)  # batch 1: positions only, no holes
    ours, stats, reference = greedy_pair(model, ids, mask, new)  # the last token sits on the last position
    expect_same(ours, reference, ids.size(1))
    return {"acceptance": acceptance(stats)}


def sft(subject: Subject, family: str) -> dict:
    from datasets import Dataset
    from transformers import PrinterCallback

    from trl_mtp import MTPSFTConfig, MTPSFTTrainer

    if subject.tokenizer is None:
        raise Refused("no tokenizer: MTP-SFT tokenizes its data")
    model = subject.trained().train() if subject.trained else subject.new_base()
    V = text_config(model).vocab_size
    generator = torch.Generator().manual_seed(subject.seed)
    rows = torch.randint(0, V, (8, 16), generator=generator).tolist()
    with tempfile.TemporaryDirectory() as out:
        args = MTPSFTConfig(
            output_dir=out,
            max_steps=2,
            per_device_train_batch_size=4,
            learning_rate=1e-3,
            logging_steps=1,
            report_to=[],
            activation_checkpointing=False,
            save_strategy="no",
            dataloader_pin_memory=False,
            disable_tqdm=True,
            seed=subject.seed,
            bf16=False,
            use_cpu=model.device.type == "cpu",
            head_type=family,
            num_mtp_heads=D,
        )
        trainer = MTPSFTTrainer(
            model, args, train_dataset=Dataset.from_dict({"input_ids": rows}), processing_class=subject.tokenizer
        )
        trainer.remove_callback(PrinterCallback)  # the losses are read from the log history, not printed
        before = [p.detach().clone() for p in trainer.mtp_model.heads.parameters()]
        trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    mtp_losses = [log["mtp/loss"] for log in trainer.state.log_history if "mtp/loss" in log]
    if len(losses) != 2 or not all(math.isfinite(x) for x in losses + mtp_losses) or not mtp_losses:
        raise Mismatch(f"losses {losses}, MTP losses {mtp_losses}: expected two finite steps of each")
    moved = [not torch.equal(b, p) for b, p in zip(before, trainer.mtp_model.heads.parameters())]
    if not any(moved):
        raise Mismatch("no head parameter changed in two optimizer steps")
    return {"detail": f"loss {losses[0]:.2f} -> {losses[-1]:.2f}, MTP {mtp_losses[0]:.2f} -> {mtp_losses[-1]:.2f}"}


def save_load(subject: Subject, family: str) -> dict:
    from trl_mtp.model import MTPForCausalLM

    model = subject.mtp(family)
    ids, mask = subject.prompts(GREEDY_LENGTHS, model.device)
    new = room(model, ids.size(1), 12)
    before, stats = model.speculative_generate(ids, mask, max_new_tokens=new, do_sample=False)
    with tempfile.TemporaryDirectory() as out:
        model.save_pretrained(out)
        again = MTPForCausalLM.from_pretrained(out, **placed(model.device)).eval()
    saved, loaded = model.heads.state_dict(), again.heads.state_dict()
    if saved.keys() != loaded.keys() or any(not torch.equal(saved[k], loaded[k]) for k in saved):
        raise Mismatch("the loaded heads' tensors differ from the saved ones")
    config, reloaded = (
        {k: v for k, v in m.base_model.generation_config.to_diff_dict().items() if k != "transformers_version"}
        for m in (model, again)
    )
    if config != reloaded:
        raise Mismatch(f"generation config {config} came back as {reloaded}")
    tied = model.get_input_embeddings().weight is model.get_output_embeddings().weight
    if tied != (again.get_input_embeddings().weight is again.get_output_embeddings().weight):
        raise Mismatch(f"tied embeddings={tied} before saving, not after loading")
    after, _ = again.speculative_generate(ids, mask, max_new_tokens=new, do_sample=False)
    expect_same(after, before, ids.size(1), against="the saved model", context="after loading, ")
    return {"acceptance": acceptance(stats)}


def bf16(subject: Subject, family: str) -> dict:
    model = subject.mtp(family)
    ids, mask = subject.prompts(GREEDY_LENGTHS, model.device)
    with torch.autocast(model.device.type, dtype=torch.bfloat16):
        ours, stats, reference = greedy_pair(model, ids, mask, room(model, ids.size(1), 16))
    V = text_config(model).vocab_size
    if ours.size(0) != ids.size(0) or ours.min() < 0 or ours.max() >= V:
        raise Mismatch(f"output {tuple(ours.shape)} with token ids outside 0..{V - 1}")
    same = sum(ours.shape == reference.shape and bool(torch.equal(a, b)) for a, b in zip(ours, reference))
    return {
        "acceptance": acceptance(stats),
        "detail": f"{same}/{ids.size(0)} rows identical to generate under autocast",
    }


def native_model(subject: Subject):
    """The subject's sequential model on an architecture with native MTP layers, or a refusal saying why not."""
    from trl_mtp.heads.native_layouts import ARCHITECTURES, has_native_layout

    if not has_native_layout(subject.config):
        raise Refused(
            f"model_type {subject.config.get_text_config().model_type!r} has no native MTP layers "
            f"(native: {', '.join(ARCHITECTURES)})"
        )
    model = subject.mtp(None if subject.trained else "sequential")
    if model.heads.head_type != "sequential":
        raise Refused(f"head_type {model.heads.head_type!r}: only sequential heads are native MTP layers")
    return model


def native_export(subject: Subject, family: str | None = None) -> dict:
    from trl_mtp.model import MTPForCausalLM
    from trl_mtp.native import export_native

    model = native_model(subject)
    ids, mask = subject.prompts(GREEDY_LENGTHS[:1], model.device)
    with tempfile.TemporaryDirectory() as out:
        keys = export_native(model, out)
        again = MTPForCausalLM.from_pretrained(out, **placed(model.device)).eval()
    ours, theirs = model.mtp_logits(ids, mask), again.mtp_logits(ids, mask)
    if ours.shape != theirs.shape or not torch.allclose(ours, theirs, atol=1e-5, rtol=1e-4):
        raise Mismatch(
            f"re-imported MTP logits differ (max |diff| "
            f"{(ours - theirs).abs().max() if ours.shape == theirs.shape else 'shape'})"
        )
    return {"detail": f"{len(keys)} MTP tensors"}


def stock_use_mtp(subject: Subject, family: str | None = None) -> dict:
    from transformers import AutoModelForCausalLM

    from trl_mtp.native import allow_stock_mtp, export_native

    model = native_model(subject)
    ids, mask = subject.prompts(GREEDY_LENGTHS[:1], model.device)  # transformers drafts with batch 1 only
    new = room(model, ids.size(1), 16)
    with tempfile.TemporaryDirectory() as out:
        if subject.native_dir:  # the user's checkpoint is a native one: stock transformers reads it as it is
            out = subject.native_dir
        else:
            export_native(model, out)
        stock = AutoModelForCausalLM.from_pretrained(out, **placed(model.device)).eval()
        allow_stock_mtp(stock)  # a model of another depth than the released ones keeps its layers elsewhere
        plain = stock.generate(ids, attention_mask=mask, max_new_tokens=new, do_sample=False)
        drafted = stock.generate(ids, attention_mask=mask, max_new_tokens=new, do_sample=False, use_mtp=True)
    expect_same(drafted, plain, ids.size(1), context="use_mtp: ")
    ours, stats = model.speculative_generate(ids, mask, max_new_tokens=new, do_sample=False)
    expect_same(ours, plain, ids.size(1), context="speculative_generate on the same layers: ")
    return {"acceptance": acceptance(stats)}


# path name -> (function, families it runs for: "all" = each family of the subject, or the one family it uses)
PATHS: dict[str, tuple[Callable, str]] = {
    "from_base": (from_base, "all"),
    "sft": (sft, "native_or_parallel"),
    "greedy": (greedy, "all"),
    "sampled": (sampled, "all"),
    "position_limit": (position_limit_path, "blockwise"),
    "save_load": (save_load, "native_or_parallel"),
    "bf16": (bf16, "native_or_parallel"),
    "native_export": (native_export, "sequential"),
    "stock_use_mtp": (stock_use_mtp, "sequential"),
}


def cells(subject: Subject, paths=None) -> list[tuple[str, str]]:
    """(path, family) pairs that `run_cell` takes, in table order; a trained checkpoint runs its own family only."""
    from trl_mtp.heads.native_layouts import has_native_layout

    out = []
    for path in paths or PATHS:
        if path not in PATHS:
            raise ValueError(f"path {path!r}: choose from {', '.join(PATHS)}")
        which = PATHS[path][1]
        if subject.trained:
            families = [subject.families[0]]
        elif which == "all":
            families = list(HEAD_TYPES)
        elif which == "native_or_parallel":
            families = ["sequential" if has_native_layout(subject.config) else "parallel"]
        else:
            families = [which]
        out += [(path, family) for family in families]
    return out


def cell_name(path: str, family: str) -> str:
    return f"{path}[{family}]" if PATHS[path][1] == "all" else path


def run_cell(subject: Subject, path: str, family: str) -> Result:
    """Run one path for one family: pass, refused (with the reason) or fail (with what went wrong, in one line)."""
    name = cell_name(path, family)
    try:
        out = PATHS[path][0](subject, family)
    except Refused as err:
        return Result(name, "refused", str(err))
    except Mismatch as err:
        return Result(name, "fail", str(err))
    except Exception as err:  # a crash is a failure of the path: named, in one line
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return Result(name, "fail", f"{type(err).__name__}: {first}"[:300])
    return Result(name, "pass", acceptance=out.get("acceptance"), detail=out.get("detail", ""))
