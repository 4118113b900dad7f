"""The shapes of model_config_preset() (model/config.c) as Hugging Face
models, shared by the CPU reference scripts (bench/model/ref_torch.py,
bench/lora/ref_peft.py, bench/generate/ref_hf_generate.py) so that every
reference measures the same networks as the C benchmarks.
"""
import torch
import transformers

PRESETS = {
    # Must match model_config_preset() in model/config.c. The tiny ones are
    # what the run.sh scripts' --quick mode measures.
    ("gpt2", "tiny"): lambda: transformers.GPT2Config(
        vocab_size=320, n_embd=64, n_layer=2, n_head=4, n_positions=256),
    ("llama", "tiny"): lambda: transformers.LlamaConfig(
        vocab_size=320, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=False),
    ("gpt2", "124m"): lambda: transformers.GPT2Config(
        vocab_size=50257, n_embd=768, n_layer=12, n_head=12, n_positions=1024),
    ("llama", "100m"): lambda: transformers.LlamaConfig(
        vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
        num_attention_heads=12, num_key_value_heads=4, max_position_embeddings=2048,
        tie_word_embeddings=True),
    # the MoE benchmark's shape: 8 experts, top-2, 402M parameters
    ("mixtral", "tiny"): lambda: transformers.MixtralConfig(
        vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        num_local_experts=4, num_experts_per_tok=2, rms_norm_eps=1e-5, tie_word_embeddings=False),
    ("mixtral", "400m"): lambda: transformers.MixtralConfig(
        vocab_size=32000, hidden_size=768, intermediate_size=2304, num_hidden_layers=8,
        num_attention_heads=12, num_key_value_heads=4, max_position_embeddings=4096,
        num_local_experts=8, num_experts_per_tok=2, rms_norm_eps=1e-5, tie_word_embeddings=False),
}


def hf_model(arch, preset):
    """(model, config): random weights, fp32, SDPA attention (PyTorch's
    fastest CPU path)."""
    cfg = PRESETS[(arch, preset)]()
    cls = {"gpt2": transformers.GPT2LMHeadModel,
           "mixtral": transformers.MixtralForCausalLM}.get(arch, transformers.LlamaForCausalLM)
    return cls._from_config(cfg, attn_implementation="sdpa", dtype=torch.float32), cfg
