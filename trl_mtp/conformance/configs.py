"""Tiny random models built from the configs of real checkpoints (nothing downloaded).

Each `Checkpoint` keeps the values of a published checkpoint that take a code path of their own (generation config,
dropout, sliding window, tied embeddings, position limits, rope scaling, logit soft-capping, MoE, native MTP layers)
and scales the sizes down: hidden 64, 2 layers, vocabulary 256. Scaled values keep the real ratios where a ratio is
what matters (rope scaling's original context over the position limit); sliding windows shrink to 8-16 tokens so a
short generation crosses them. Special token ids above 127 (real ones sit at the top of vocabularies of 32k-150k) map
into the upper half of the tiny vocabulary (`tiny_id`), so they stay distinct from each other and from low ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

VOCAB = 256
# initializer_range 0.3 (released inits use 0.02): next-token distributions of a random model about as peaked as a
# trained one's (entropy ~3.3 nats, top token ~0.25) instead of near-uniform ones (5.5 nats, the vocabulary's log),
# so the sampling test sees temperature and top-p at work and bf16 near-ties are not everywhere
SIZES = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    initializer_range=0.3,
)
MOE = dict(
    moe_intermediate_size=32,
    n_routed_experts=4,
    n_shared_experts=1,
    num_experts_per_tok=2,
    first_k_dense_replace=1,
    n_group=1,
    topk_group=1,
)


def tiny_id(token_id: int) -> int:
    """A real checkpoint's token id in the tiny vocabulary."""
    half = VOCAB // 2
    return token_id if token_id < half else half + token_id % half


def tiny_ids(value):
    return [tiny_id(v) for v in value] if isinstance(value, (list, tuple)) else tiny_id(value)


@dataclass(frozen=True)
class Checkpoint:
    """A published checkpoint, scaled down: `config` and `generation` as its config.json / generation_config.json
    give them (token ids in the real vocabulary), sizes replaced by `SIZES` unless `config` sets its own."""

    source: str  # the hub id the values come from
    model_type: str
    config: dict
    generation: dict = field(default_factory=dict)
    attn_implementation: str = "sdpa"
    what: str = ""  # the settings this checkpoint brings, for the table
    fill: dict = field(default_factory=dict)  # parameter-name suffix -> value, set after the random init

    def build_config(self):
        ids = {k: tiny_ids(v) for k, v in self.generation.items() if k.endswith("token_id")}
        values = {**SIZES, **self.config, "vocab_size": VOCAB, **ids}
        return AutoConfig.for_model(self.model_type, **values)

    def generation_config(self) -> GenerationConfig:
        values = {k: tiny_ids(v) if k.endswith("token_id") else v for k, v in self.generation.items()}
        return GenerationConfig(**values)


CHECKPOINTS: dict[str, Checkpoint] = {
    "llama3": Checkpoint(
        "meta-llama/Llama-3.1-8B-Instruct",
        "llama",
        # rope llama3: context 131072 from an original 8192 (ratio 16, factor 8); here 128 from 8
        dict(
            max_position_embeddings=128,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            rope_parameters=dict(
                rope_type="llama3",
                rope_theta=500000.0,
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=8,
            ),
        ),
        dict(bos_token_id=128000, eos_token_id=[128001, 128008, 128009], do_sample=True, temperature=0.6, top_p=0.9),
        what="rope llama3; three EOS ids, no pad; temperature 0.6, top_p 0.9",
    ),
    "qwen2.5": Checkpoint(
        "Qwen/Qwen2.5-7B-Instruct",
        "qwen2",
        dict(
            max_position_embeddings=128,
            rms_norm_eps=1e-6,
            tie_word_embeddings=False,
            use_sliding_window=False,
            rope_parameters=dict(rope_type="default", rope_theta=1000000.0),
        ),
        dict(
            bos_token_id=151643,
            eos_token_id=[151645, 151643],
            pad_token_id=151643,
            do_sample=True,
            repetition_penalty=1.05,
            temperature=0.7,
            top_k=20,
            top_p=0.8,
        ),
        what="qkv bias; repetition_penalty 1.05, temperature 0.7, top_k 20, top_p 0.8",
    ),
    "qwen3": Checkpoint(
        "Qwen/Qwen3-8B",
        "qwen3",
        dict(
            head_dim=16,
            max_position_embeddings=128,
            rms_norm_eps=1e-6,
            tie_word_embeddings=False,
            rope_parameters=dict(rope_type="default", rope_theta=1000000.0),
        ),
        dict(
            bos_token_id=151643,
            eos_token_id=[151645, 151643],
            pad_token_id=151643,
            do_sample=True,
            temperature=0.6,
            top_k=20,
            top_p=0.95,
        ),
        what="q/k norms; temperature 0.6, top_k 20, top_p 0.95",
    ),
    "gemma2": Checkpoint(
        "google/gemma-2-2b-it",
        "gemma2",
        # sliding window 4096 on every other layer (here 8); soft-capping of attention scores and final logits;
        # transformers runs Gemma-2 with eager attention (sdpa cannot soft-cap)
        dict(
            head_dim=16,
            query_pre_attn_scalar=16,
            max_position_embeddings=128,
            sliding_window=8,
            layer_types=["sliding_attention", "full_attention"],
            attn_logit_softcapping=50.0,
            final_logit_softcapping=30.0,
            tie_word_embeddings=True,
            hidden_activation="gelu_pytorch_tanh",
        ),
        dict(bos_token_id=2, eos_token_id=[1, 107], pad_token_id=0, cache_implementation="hybrid"),
        attn_implementation="eager",
        what="sliding window 8 on the first of 2 layers; soft-capping 50 / 30; tied embeddings; hybrid cache",
        # Gemma scales its embeddings by sqrt(hidden): with random weights the token's own embedding then outweighs
        # every layer and greedy decoding repeats one token forever. Post-norm gains of 16 (Gemma norms multiply by
        # 1 + weight) give the layers their weight back: ~3.5 nats, no loop
        fill={"post_attention_layernorm.weight": 15.0, "post_feedforward_layernorm.weight": 15.0},
    ),
    "mistral": Checkpoint(
        "mistralai/Mistral-7B-v0.1",
        "mistral",
        dict(max_position_embeddings=128, sliding_window=8, rms_norm_eps=1e-5, tie_word_embeddings=False),
        dict(bos_token_id=1, eos_token_id=2),
        what="sliding window 8 on every layer (4096 in the release)",
    ),
    "gpt2": Checkpoint(
        "openai-community/gpt2",
        "gpt2",
        # learned positions: n_positions is a hard limit (1024; here 32)
        dict(
            n_embd=64,
            n_layer=2,
            n_head=4,
            n_positions=32,
            resid_pdrop=0.1,
            embd_pdrop=0.1,
            attn_pdrop=0.1,
            activation_function="gelu_new",
            layer_norm_epsilon=1e-5,
            tie_word_embeddings=True,
        ),
        dict(bos_token_id=50256, eos_token_id=50256),
        what="dropout 0.1; learned positions, n_positions 32; tied embeddings; no pad",
    ),
    "olmo2": Checkpoint(
        "allenai/OLMo-2-1124-7B-Instruct",
        "olmo2",
        # norms after attention and MLP (not before), q/k norms
        dict(
            max_position_embeddings=128,
            rms_norm_eps=1e-6,
            tie_word_embeddings=False,
            rope_parameters=dict(rope_type="default", rope_theta=500000.0),
        ),
        dict(bos_token_id=100257, eos_token_id=100257, pad_token_id=100277),
        what="post-norm blocks, q/k norms",
    ),
    "phi3": Checkpoint(
        "microsoft/Phi-3-mini-4k-instruct",
        "phi3",
        # fused qkv and gate_up projections; sliding window 2047 in a 4096 context (here 15 in 128)
        dict(
            max_position_embeddings=128,
            original_max_position_embeddings=128,
            sliding_window=15,
            tie_word_embeddings=False,
            rope_parameters=dict(rope_type="default", rope_theta=10000.0),
        ),
        dict(bos_token_id=1, eos_token_id=[32000, 32001, 32007], pad_token_id=32000),
        what="fused qkv / gate_up; sliding window 15 on every layer",
    ),
    "deepseek_v3": Checkpoint(
        "deepseek-ai/DeepSeek-V3",
        "deepseek_v3",
        # MLA attention, MoE with a shared expert, yarn rope (context 163840 from 4096: factor 40; here 160 from 4)
        # MLA gives every query head its own key/value head (128 and 128 in the release): with fewer, transformers'
        # attention fails on a padded batch (a shape error inside sdpa)
        dict(
            **MOE,
            num_key_value_heads=4,
            routed_scaling_factor=2.5,
            q_lora_rank=16,
            kv_lora_rank=16,
            qk_rope_head_dim=8,
            qk_nope_head_dim=8,
            v_head_dim=16,
            max_position_embeddings=160,
            num_nextn_predict_layers=1,
            tie_word_embeddings=False,
            rope_parameters=dict(
                rope_type="yarn",
                rope_theta=10000.0,
                factor=40.0,
                original_max_position_embeddings=4,
                beta_fast=32.0,
                beta_slow=1.0,
                mscale=1.0,
                mscale_all_dim=1.0,
            ),
        ),
        dict(bos_token_id=0, eos_token_id=1, do_sample=True, temperature=0.6, top_p=0.95),
        what="MLA, MoE, yarn rope; native MTP; temperature 0.6, top_p 0.95",
    ),
    "glm4.5": Checkpoint(
        "zai-org/GLM-4.5-Air",
        "glm4_moe",
        dict(
            **MOE,
            head_dim=16,
            routed_scaling_factor=1.0,
            attention_bias=True,
            use_qk_norm=False,
            max_position_embeddings=128,
            num_nextn_predict_layers=1,
            tie_word_embeddings=False,
            rope_parameters=dict(rope_type="default", rope_theta=1000000.0, partial_rotary_factor=0.5),
        ),
        dict(eos_token_id=[151329, 151336, 151338], pad_token_id=151329),
        what="MoE, partial rotary 0.5, qkv bias; native MTP; three EOS ids",
    ),
}


def tiny_model(name: str, seed: int = 0):
    """A randomly initialised tiny model of checkpoint `name` (float32, eval mode, as `from_pretrained` gives it),
    with that checkpoint's generation config; the same weights for the same seed."""
    if name not in CHECKPOINTS:
        raise ValueError(f"checkpoint {name!r}: not a conformance model; choose from {', '.join(CHECKPOINTS)}")
    checkpoint = CHECKPOINTS[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(
            checkpoint.build_config(), attn_implementation=checkpoint.attn_implementation
        )
    with torch.no_grad():
        for name, param in model.named_parameters():
            for suffix, value in checkpoint.fill.items():
                if name.endswith(suffix):
                    param.fill_(value)
    model.generation_config = checkpoint.generation_config()
    return model.float().eval()


def tiny_tokenizer(name: str):
    """A word-level tokenizer of the tiny vocabulary ("t0" .. "t255") with checkpoint `name`'s special tokens; a
    checkpoint without a pad token gets its (first) EOS token as pad, as users of Llama-3, Mistral and GPT-2 do."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    gen = CHECKPOINTS[name].generation_config()
    word = Tokenizer(models.WordLevel({f"t{i}": i for i in range(VOCAB)}, unk_token="t0"))
    word.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    eos = gen.eos_token_id[0] if isinstance(gen.eos_token_id, list) else gen.eos_token_id
    pad = gen.pad_token_id if gen.pad_token_id is not None else eos
    special = {"eos_token": f"t{eos}", "pad_token": f"t{pad}"}
    if gen.bos_token_id is not None:
        special["bos_token"] = f"t{gen.bos_token_id}"
    return PreTrainedTokenizerFast(tokenizer_object=word, **special)
