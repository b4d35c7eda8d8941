"""Speed and memory of the policies on the Llama 3 architecture at size, with random weights.

Llama 3 weights cannot be downloaded here; speed and memory do not depend on the weights, so
this builds the real Llama 3 8B / 70B configuration (GQA 32:8, head dim 128, llama3 RoPE
scaling, 128k vocabulary) with random bf16 weights directly on the GPU and runs the same
measurement as `namm bench` on random token ids. `--size tiny` is a CPU smoke run.

    python bench/bench_llama3_arch.py --size 8b --lengths 8192,32768 --policies full,surprisal,h2o,streaming_llm
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from namm.bench import format_table, run_one, run_rows  # noqa: E402
from namm.models import LoadedModel, prepare_model  # noqa: E402

ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
SIZES = {  # hidden, intermediate, layers, q heads, kv heads
    "8b": (4096, 14336, 32, 32, 8),
    "70b": (8192, 28672, 80, 64, 8),
    "tiny": (256, 512, 2, 8, 2),
}


def llama3_config(size: str) -> LlamaConfig:
    hidden, inter, layers, hq, hkv = SIZES[size]
    return LlamaConfig(vocab_size=128256, hidden_size=hidden, intermediate_size=inter,
                       num_hidden_layers=layers, num_attention_heads=hq, num_key_value_heads=hkv,
                       head_dim=hidden // hq, max_position_embeddings=131072, rope_parameters=ROPE,
                       rms_norm_eps=1e-5, bos_token_id=128000, eos_token_id=128001)


def random_llama3(size: str, device: str, dtype: torch.dtype) -> LoadedModel:
    config = llama3_config(size)
    torch.manual_seed(0)
    with torch.device(device):  # initialise in place: no 8B-parameter copy through host memory
        model = LlamaForCausalLM._from_config(config, torch_dtype=dtype).eval()
    prepare_model(model)
    return LoadedModel(model=model, tokenizer=None, name=f"Llama-3-{size} (random weights, {dtype})",
                       path=None, max_context=config.max_position_embeddings)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="8b")
    p.add_argument("--lengths", default="8192,32768")
    p.add_argument("--policies", default="full,surprisal,h2o,streaming_llm,snapkv,tova")
    p.add_argument("--budget", type=float, default=0.25)
    p.add_argument("--decode-tokens", type=int, default=32)
    p.add_argument("--n-up", type=int, default=512)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json-out", default=None)
    p.add_argument("--warmup", type=int, default=1024,
                   help="tokens of one unmeasured full-cache pass first (kernel selection, allocator warm-up)")
    p.add_argument("--profile", default=None, metavar="POLICY:TOKENS",
                   help="after the table, profile one run of POLICY at TOKENS and print the top operators")
    args = p.parse_args(argv)
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    started = time.perf_counter()
    lm = random_llama3(args.size, args.device, dtype)
    print(f"built {lm.name} on {args.device} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    lengths = [int(x) for x in args.lengths.split(",")]
    gen = torch.Generator().manual_seed(0)
    ids_all = torch.randint(0, lm.config.vocab_size, (1, max(lengths)), generator=gen)
    policies = [x.strip() for x in args.policies.split(",") if x.strip()]

    def gpu_peak(row: dict) -> None:
        if args.device.startswith("cuda"):
            row["gpu_peak_bytes"] = torch.cuda.max_memory_allocated()
            torch.cuda.reset_peak_memory_stats()

    if args.warmup:  # the first forward on a GPU pays for kernel selection: keep it out of the table
        run_one(lm, ids_all[:, :args.warmup], "full", None, 2, args.n_up)
        torch.cuda.reset_peak_memory_stats() if args.device.startswith("cuda") else None
    rows = run_rows(lm, ids_all, [(n, p) for n in lengths for p in policies], args, on_row=gpu_peak)
    print(f"model {lm.name}, device {args.device}, budget {args.budget}, n_up {args.n_up}, "
          f"{args.decode_tokens} decode tokens")
    print(format_table(rows))
    if args.profile:
        print_profile(lm, ids_all, args)
    return 0


def print_profile(lm: LoadedModel, ids_all: torch.Tensor, args) -> None:
    """Where one run's time goes, by operator (CPU and, on a GPU, device time)."""
    from torch.profiler import ProfilerActivity, profile

    policy, _, tokens = args.profile.partition(":")
    ids = ids_all[:, :int(tokens or ids_all.shape[1])]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device.startswith("cuda") else [])
    with profile(activities=activities) as prof:
        run_one(lm, ids, policy, args.budget, args.decode_tokens, args.n_up)
    key = "cuda_time_total" if args.device.startswith("cuda") else "cpu_time_total"
    print(f"profile of {policy} at {ids.shape[1]} tokens, by {key}")
    print(prof.key_averages().table(sort_by=key, row_limit=25))
    print("by cpu_time_total")
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=25))


if __name__ == "__main__":
    sys.exit(main())
