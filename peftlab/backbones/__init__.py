"""Backbones: load a pretrained model and its tokenizer or processor, and say what it computes in.

loaders.py resolves an alias, local path or hub id and loads text encoders; causal_lm.py loads a
causal LM (fp32, or 4/8-bit); gguf_cache.py turns a packaged GGUF file into safetensors once;
precision.py decides fp32 or bf16; kv_cache.py and hub_kernels.py keep transformers' and
bitsandbytes' habits from reaching the rest of the package. (The image loaders stay in images/,
beside the EfficientNet and CLIP code they build on.)
"""
