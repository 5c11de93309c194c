"""Weight statistics of the heads: per-depth parameter norms, update norms, cosine similarities.

A depth's parameters are found without family-specific names: every `nn.ModuleList` child of the heads with one entry
per depth (`layers`, `out_projs`, `res_blocks`, `lm_heads`) contributes entry i-1 to depth i; parameters outside
such lists (blockwise's shared W1) are `shared`. Cosine similarities compare flattened parameter vectors: between
depths (same structure), and to the base's last decoder layer over the parameters that match it by name suffix and
shape (parallel and sequential heads hold a copy of that layer; other families have none: `None`).
"""

from __future__ import annotations

import torch
from torch import nn


def depth_parameters(heads: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """'1'..'D' (and 'shared' when present) -> {parameter name: parameter}."""
    D = heads.num_depths
    groups: dict[str, dict[str, torch.Tensor]] = {str(i): {} for i in range(1, D + 1)}
    in_lists = set()
    for list_name, child in heads.named_children():
        if isinstance(child, nn.ModuleList) and len(child) == D:
            for i, module in enumerate(child, start=1):
                for name, param in module.named_parameters():
                    groups[str(i)][f"{list_name}.{name}"] = param
                    in_lists.add(id(param))
    shared = {name: p for name, p in heads.named_parameters() if id(p) not in in_lists}
    if shared:
        groups["shared"] = shared
    return groups


def flat(params: dict[str, torch.Tensor], names=None) -> torch.Tensor:
    names = sorted(params) if names is None else names
    return torch.cat([params[n].detach().float().flatten().cpu() for n in names]) if names else torch.zeros(0)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float | None:
    if a.numel() == 0 or a.shape != b.shape:
        return None
    return torch.nn.functional.cosine_similarity(a, b, dim=0).item()


def matching_base_parameters(params: dict[str, torch.Tensor], last_layer: nn.Module) -> tuple[list, list]:
    """(head names, base names) of head parameters that are copies of a base last-layer parameter (same suffix,
    same shape), e.g. `layers.0.mtp_block.mlp.up_proj.weight` <-> `mlp.up_proj.weight`."""
    base = dict(last_layer.named_parameters())
    head_names, base_names = [], []
    for name in sorted(params):
        match = next(
            (k for k in base if (name == k or name.endswith("." + k)) and base[k].shape == params[name].shape), None
        )
        if match is not None:
            head_names.append(name)
            base_names.append(match)
    return head_names, base_names


class WeightTracker:
    """Weight statistics at each call; update norms are measured against the previous call's CPU copy (one copy of
    the head parameters is kept, which is small next to the base model)."""

    def __init__(self, mtp_model):
        self.mtp_model = mtp_model
        self.previous: dict[str, torch.Tensor] | None = None

    def __call__(self) -> dict:
        heads, last_layer = self.mtp_model.heads, self.mtp_model.trunk.last_layer
        groups = depth_parameters(heads)
        current = {g: flat(p) for g, p in groups.items()}
        depths = [g for g in groups if g != "shared"]
        base_params = dict(last_layer.named_parameters())
        out = {"norm": {}, "update_norm": {}, "cos_to_base_last_layer": {}, "cos_between_depths": []}
        for g, vector in current.items():
            out["norm"][g] = vector.norm().item()
            if self.previous is not None and g in self.previous:
                out["update_norm"][g] = (vector - self.previous[g]).norm().item()
        for g in depths:
            head_names, base_names = matching_base_parameters(groups[g], last_layer)
            out["cos_to_base_last_layer"][g] = (
                cosine(flat(groups[g], head_names), flat(base_params, base_names)) if head_names else None
            )
        out["cos_between_depths"] = [[cosine(current[a], current[b]) for b in depths] for a in depths]
        self.previous = current
        return out
