"""Analytic cost of one NAMM update against the forward pass of the same 512-token window.

Counts multiply-accumulates per layer: the model's forward over the window (projections, MLP,
attention), NAMM's recomputed window attention (QK^T of the window's queries over the cache) and
its BAM scorer (backward attention over the cache, hidden 32, causal half). It shows why the
policy's share is large on a 135M model and small on Llama 3: the scorer's cost depends on the
cache and KV heads, the forward's on the model width.

    .venv/bin/python bench/policy_flops.py
"""

MODELS = {  # hidden, intermediate, layers, q heads, kv heads, head dim
    "SmolLM2-135M": (576, 1536, 30, 9, 3, 64),
    "Llama-3-8B": (4096, 14336, 32, 32, 8, 128),
    "Llama-3-70B": (8192, 28672, 80, 64, 8, 128),
}


def per_layer_macs(model, cache_slots, window=512, bam_hidden=32):
    hidden, inter, _, hq, hkv, d = MODELS[model]
    proj = hidden * (hq * d + 2 * hkv * d) + hq * d * hidden
    mlp = 3 * hidden * inter
    attn = 2 * window * cache_slots * hq * d
    forward = window * (proj + mlp) + attn
    recompute = window * cache_slots * hq * d
    bam = hkv * (cache_slots**2 * bam_hidden) + hkv * cache_slots * 25 * (3 * bam_hidden + 50 + 1)
    stft = hkv * cache_slots * (window // 16) * 32 * 5  # radix-2 FFT of 32 points per frame
    return forward, recompute + bam + stft


def main():
    print(f"{'model':<14} {'cache slots':>11} {'forward GMAC':>12} {'NAMM GMAC':>10} {'NAMM/forward':>12}")
    for model in MODELS:
        for slots in (1536, 4608, 8704):  # 25% of 4k + window, 4k + window (no eviction yet), 8k + window
            fwd, namm = per_layer_macs(model, slots)
            print(f"{model:<14} {slots:>11} {fwd / 1e9:>12.2f} {namm / 1e9:>10.3f} {100 * namm / fwd:>11.1f}%")


if __name__ == "__main__":
    main()
