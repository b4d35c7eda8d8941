"""The pool: prompts read once by the full cache, one file per prompt, shared by every stage.

    # record (resumable; shard i/k: k processes with one thread each fill the same folder)
    python -m namm.evolution pool --split train --n 500 --out runs/pool/train [--shard 0/2]
    # the same with the attention recordings the warm start and `refine` need (large files)
    python -m namm.evolution pool --split train --n 500 --out runs/pool/train --attention
    # the pool without token ids, to commit; `unpack` writes the per-prompt files again
    python -m namm.evolution pool pack --pool runs/pool/train --packed docs/results/surprisal-pool/train.pt
    python -m namm.evolution pool unpack --packed docs/results/surprisal-pool/train.pt --pool runs/pool/train

Prompts are drawn round-robin over tasks and lengths (deterministic per split and index). Each
is recorded once (`record`): the full cache reads the document in `n_up`-token chunks, and the
logits of that same pass give every document token's surprisal; the gold answer is then read by
teacher forcing (the full cache's log-prob of it) and the full cache answers greedily (a prompt
is "solved" when that answer scores 1). With `attention`, the document is read by a NAMM that
keeps everything and records, at every update of every layer, each cached token's raw EMA
spectrogram (the open-loop features), and the teacher-forced question + answer give per (layer,
KV head) the attention they pay to each document token (the warm start's label).

A pool is a folder of `<task>-<length>-<index>.pt` files (no index: the files are the pool, each
written whole or not at all); `load_pool` reads every file in name order, including the files of
the two older formats (the surprisal pool's `PoolPrompt` and the attention pool's `Recording`).
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from namm.generate import greedy_decode
from namm.memory import NammCache, window_attention
from namm.policies import make_policy
from namm.policies.namm import NammPolicy
from namm.prompts import encode_text, split_prompt, stop_token_ids
from namm.surprisal import SurprisalLog
from namm.tasks import Sample, get_task, make_sample, parse_lengths, score_answer

from .surrogate import PromptRefs, answer_log_prob

DEFAULT_TASKS = ("passkey,niah_single,niah_multikey,niah_multivalue,doc_qa,doc_source,"
                 "code_constant,code_calls,code_returns")
FORMAT = "namm-pool/1"
GOLD_TOKENS = 32  # the gold answer is scored on its first 32 tokens


# ---- the record ------------------------------------------------------------------------------
@dataclass
class PoolPrompt:
    """One prompt as the full cache read it. Core: which prompt, its token ids (query-agnostic: the
    document is read before the question), the full cache's answer and its log-prob of the gold
    answer. Optional: `surprisal` (always recorded now; absent from files of the old attention
    pool) and the attention part (`updates`, `importance`, with `--attention` only)."""

    task: str
    length: int
    index: int
    split: str | None           # None: a file of the old surprisal pool (it did not store it)
    # the token ids; None only for a file of the old attention pool read without a tokenizer
    ctx_ids: torch.Tensor | None   # [1, T] the document
    q_ids: torch.Tensor | None     # [1, Q] the question
    gold_ids: torch.Tensor | None  # [1, A] the gold answer's first GOLD_TOKENS tokens
    correct: float              # the full cache's score on its own greedy answer
    prediction: str             # that answer
    full_log_prob: float        # mean log-prob of the gold answer tokens under the full cache
    surprisal: torch.Tensor | None = None   # [T] float16, nats: -log p(token | the document before it)
    updates: list[dict] | None = None       # per layer and update: ema [H, S, 17] f16, positions [H, S], seen, layer
    importance: torch.Tensor | None = None  # [L, H, T] f16: attention of question + answer to each document token
    rows: int | None = None     # the recomputed window rows the attention features were recorded for
    seconds: float = 0.0        # time taken to record

    @property
    def name(self) -> str:
        return f"{self.task}-{self.length}-{self.index:05d}.pt"

    @property
    def context_len(self) -> int:
        if self.ctx_ids is not None:
            return self.ctx_ids.shape[1]
        return self.importance.shape[-1]

    @property
    def has_attention(self) -> bool:
        return self.updates is not None and self.importance is not None

    def refs(self) -> PromptRefs:
        """The prompt for `surrogate.closed_loop_fitness` (the gold answer as the one reference)."""
        self._need("ids")
        return PromptRefs(self.ctx_ids, self.q_ids, [self.gold_ids], [self.full_log_prob])

    def _need(self, part: str) -> None:
        missing = {"ids": self.ctx_ids is None, "surprisal": self.surprisal is None,
                   "attention": not self.has_attention}[part]
        if missing:
            how = {"ids": "load the pool with a tokenizer", "surprisal": "record the pool again",
                   "attention": "record the pool again with --attention"}[part]
            raise ValueError(f"{self.name}: recorded without {part} ({how})")

    def save(self, path: Path) -> None:
        """Written whole or not at all (a killed run leaves no half-written prompt)."""
        tmp = Path(path).with_suffix(".tmp")
        torch.save({"format": FORMAT, **{f.name: getattr(self, f.name) for f in fields(self)}}, tmp)
        tmp.rename(path)

    @classmethod
    def load(cls, path: Path, tokenizer=None) -> "PoolPrompt":
        """A pool file of any format. An old attention-pool file (`Recording`) stored its sample's
        text, not its token ids: with `tokenizer` they are made again from it, else left None."""
        data = torch.load(path, map_location="cpu", weights_only=False)
        if data.get("format") == FORMAT:
            return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})
        if "ctx_ids" in data:  # the old surprisal pool's PoolPrompt: the core and the surprisal
            return cls(split=None, **data)
        if "sample" in data:   # the old attention pool's Recording
            sample = Sample.from_dict(data["sample"])
            ids = tokenize(tokenizer, sample) if tokenizer is not None else (None, None, None)
            return cls(task=data["task"], length=int(sample.meta["length"]), index=int(sample.meta["index"]),
                       split=sample.meta.get("split"), ctx_ids=ids[0], q_ids=ids[1], gold_ids=ids[2],
                       correct=float(data["correct"]), prediction=data["prediction"],
                       full_log_prob=float(data["answer_log_prob"]), updates=data["updates"],
                       importance=data["importance"], seconds=float(data.get("seconds", 0.0)))
        raise ValueError(f"{path}: not a pool file")


def load_pool(path: Path, solved_only: bool = True, tokenizer=None, need: tuple[str, ...] = ()
              ) -> list[PoolPrompt]:
    """Every prompt of the pool folder `path`, in file-name order; `solved_only`: those the full
    cache answers right. `need`: parts every prompt must have ("ids", "surprisal", "attention"),
    else a ValueError that says how to get them."""
    prompts = [PoolPrompt.load(f, tokenizer) for f in sorted(Path(path).glob("*.pt"))]
    prompts = [p for p in prompts if p.correct >= 1.0 or not solved_only]
    for p in prompts:
        for part in need:
            p._need(part)
    return prompts


# ---- recording -------------------------------------------------------------------------------
def plan(tasks: list[str], lengths: list[int], n: int, start: int = 0) -> list[tuple[str, int, int]]:
    """(task, length, index) for prompt i of the pool: tasks and lengths cycle, indices grow."""
    combos = [(t, length) for length in lengths for t in tasks]
    return [(*combos[i % len(combos)], start + i // len(combos)) for i in range(n)]


def tokenize(tok, sample: Sample) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(document ids [1, T], question ids [1, Q], gold answer ids [1, A]) as every run tokenises
    the prompt (query-agnostic: the document is read before the question)."""
    parts = split_prompt(tok, sample.context, sample.question, None, query_aware=False)
    gold_ids = torch.tensor([tok.encode(sample.gold_text, add_special_tokens=False)[:GOLD_TOKENS]])
    return encode_text(tok, parts.context), encode_text(tok, parts.question), gold_ids


def prompt_ids(tok, task: str, length: int, split: str, index: int):
    """(sample, document ids, question ids, gold answer ids) of a prompt (see `tokenize`)."""
    sample = make_sample(task, length, split, index)
    return (sample, *tokenize(tok, sample))


class RecordingNamm(NammPolicy):
    """Keeps every token (zero parameters, no budget) and records each update's raw features."""

    def __init__(self, rows: int | None):
        super().__init__(rows=rows)
        self.records: list[dict] = []

    def scores(self, ctx):
        self.token_features(ctx)  # updates ctx.state["namm_ema"] (the raw, unnormalised EMA)
        self.records.append({
            "layer": ctx.layer_idx, "seen": ctx.seen,
            "ema": ctx.state["namm_ema"][0].to(torch.float16).clone(),   # [H, S, 17]
            "positions": ctx.positions[0].to(torch.int32).clone(),       # [H, S]
        })
        return torch.zeros(ctx.valid.shape)


@torch.no_grad()
def full_pass(lm, ctx_ids: torch.Tensor, n_up: int = 512, surprisal: bool = True,
              policy=None) -> tuple[NammCache, torch.Tensor | None]:
    """The document read by the full cache in `n_up`-token chunks: (cache, surprisal [T] float32).
    `policy`: one that keeps everything (default: the full cache; a `RecordingNamm` to record the
    features). With `surprisal=False` the LM head runs for one token per chunk: the KV only."""
    cache = NammCache(lm.model.config, policy or make_policy("full"), n_up=n_up)
    log = SurprisalLog()
    for start in range(0, ctx_ids.shape[1], n_up):
        chunk = ctx_ids[:, start: start + n_up].to(lm.device)
        out = lm.model(input_ids=chunk, past_key_values=cache, use_cache=True,
                       logits_to_keep=0 if surprisal else 1)
        cache.after_forward(chunk, out.logits)
        if surprisal:
            log.record(chunk, out.logits)
    cache.flush()  # the last update (a policy that keeps everything evicts nothing)
    return cache, log.values[0].cpu() if surprisal else None


def _qa_attention(cache: NammCache, context_len: int) -> torch.Tensor:
    """[L, H, T]: mean attention of the last forward's queries over the first T (document) slots."""
    rows = []
    for layer in cache.layers:
        attn = window_attention(layer.pending_queries[-1], layer.keys[:, :, :layer.length],
                                layer.valid[:, :, :layer.length], layer.scale)
        rows.append(attn[0, :, :, :context_len].mean(1))
    return torch.stack(rows)


@torch.no_grad()
def record(lm, task: str, length: int, split: str, index: int, attention: bool = False, rows: int | None = 128,
           n_up: int = 512) -> PoolPrompt:
    """One prompt read once by the full cache (see the module docstring)."""
    started = time.perf_counter()
    tok = lm.tokenizer
    sample, ctx_ids, q_ids, gold_ids = prompt_ids(tok, task, length, split, index)
    recorder = RecordingNamm(rows) if attention else None
    cache, surprisal = full_pass(lm, ctx_ids, n_up, policy=recorder)
    cache.n_up = 1 << 30  # no more updates: the question and answer only read the document
    snap = cache.snapshot()
    cont = torch.cat([q_ids, gold_ids], 1).to(lm.device)
    logits = lm.model(input_ids=cont, past_key_values=cache, use_cache=True).logits[0]
    full_lp = answer_log_prob(logits[-gold_ids.shape[1] - 1:-1], gold_ids)  # row i predicts token i
    importance = _qa_attention(cache, ctx_ids.shape[1]).to(torch.float16).cpu() if attention else None
    cache.restore(snap)
    first = lm.model(input_ids=q_ids.to(lm.device), past_key_values=cache, use_cache=True).logits[:, -1]
    out = greedy_decode(lm, cache, first, get_task(task).max_new_tokens, stop_token_ids(tok))
    prediction = tok.decode(out, skip_special_tokens=True).strip()
    return PoolPrompt(task, length, index, split, ctx_ids, q_ids, gold_ids,
                      float(score_answer(prediction, sample.answers, sample.metric)), prediction, full_lp,
                      surprisal=surprisal.to(torch.float16), updates=recorder.records if attention else None,
                      importance=importance, rows=rows if attention else None,
                      seconds=time.perf_counter() - started)


def build_pool(lm, out: Path, split: str, tasks: list[str], lengths: list[int], n: int,
               shard: tuple[int, int] = (0, 1), start: int = 0, attention: bool = False, rows: int | None = 128,
               log=print) -> None:
    """Record the first `n` prompts of the plan that are not in `out` yet; shard (i, k) records
    every k-th from the i-th, so k processes fill the same folder side by side."""
    out.mkdir(parents=True, exist_ok=True)
    i, k = shard
    for task, length, index in plan(tasks, lengths, n, start)[i::k]:
        path = out / f"{task}-{length}-{index:05d}.pt"
        if path.exists():
            continue
        p = record(lm, task, length, split, index, attention=attention, rows=rows)
        p.save(path)
        log(f"{time.strftime('%H:%M:%S')} {path.name}: {p.context_len} tokens, correct {p.correct:.2f}, "
            f"{p.seconds:.1f} s")


# ---- packed: the pool without token ids, to commit ---------------------------------------------
PACKED_FIELDS = ("task", "length", "index", "surprisal", "correct", "prediction", "full_log_prob")


def pack_pool(pool: Path, out: Path, split: str) -> int:
    """The pool's core and surprisal without token ids (the task generators and the tokenizer give
    them back) nor attention: one small file to commit, so that a later session or another machine
    goes on from the same pool."""
    prompts = load_pool(pool, solved_only=False, need=("surprisal",))
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"split": split, "prompts": [{k: getattr(p, k) for k in PACKED_FIELDS} for p in prompts]}, out)
    return len(prompts)


def unpack_pool(tok, packed: Path, pool: Path) -> int:
    """Write the per-prompt files of a packed pool again (token ids re-made and checked against
    the recorded surprisal: a changed generator or tokenizer is an error, not a silent mismatch)."""
    data = torch.load(packed, weights_only=False)
    pool.mkdir(parents=True, exist_ok=True)
    for row in data["prompts"]:
        _, ctx_ids, q_ids, gold_ids = prompt_ids(tok, row["task"], row["length"], data["split"], row["index"])
        if ctx_ids.shape[1] != row["surprisal"].shape[0]:
            raise ValueError(f"{row['task']}-{row['length']}-{row['index']}: {ctx_ids.shape[1]} document tokens now, "
                             f"{row['surprisal'].shape[0]} when recorded (generator or tokenizer changed)")
        p = PoolPrompt(split=data["split"], ctx_ids=ctx_ids, q_ids=q_ids, gold_ids=gold_ids, **row)
        p.save(pool / p.name)
    return len(data["prompts"])


# ---- the command -----------------------------------------------------------------------------
def _shard(text: str) -> tuple[int, int]:
    i, _, k = text.partition("/")
    if not (i.isdigit() and k.isdigit() and int(i) < int(k)):
        raise ValueError(f"--shard {text}: want i/k with 0 <= i < k, e.g. 0/2")
    return int(i), int(k)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="the model's weights and activations (a pool at another precision)")


def _load_model(args):
    from namm import load_model

    torch.set_num_threads(args.threads)
    return load_model(dtype=getattr(torch, args.dtype))


def main(argv=None) -> int:
    import sys

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] in (["pack"], ["unpack"]):
        p = argparse.ArgumentParser(description=f"{argv[0]} a pool: the pool without token ids, to commit")
        p.add_argument("--pool", "--out", dest="pool", default="runs/pool/train", help="the pool folder")
        p.add_argument("--packed", default="docs/results/surprisal-pool/train.pt")
        p.add_argument("--split", default="train", help="pack: the split the pool was recorded from")
        _common(p)
        args = p.parse_args(argv[1:])
        if argv[0] == "pack":
            n = pack_pool(Path(args.pool), Path(args.packed), args.split)
            print(f"{n} prompts from {args.pool} packed into {args.packed}")
        else:
            n = unpack_pool(_load_model(args).tokenizer, Path(args.packed), Path(args.pool))
            print(f"{n} prompts from {args.packed} written to {args.pool}")
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                epilog="`pool pack` / `pool unpack` (--pool, --packed): the pool without token ids")
    p.add_argument("--split", default="train")
    p.add_argument("--tasks", default=DEFAULT_TASKS)
    p.add_argument("--lengths", default="1024,1536,2048")
    p.add_argument("--n", type=int, default=500, help="prompts to record (solved or not)")
    p.add_argument("--start", type=int, default=0, help="first sample index")
    p.add_argument("--shard", default="0/1", help="i/k: this process records every k-th prompt from the i-th")
    p.add_argument("--out", "--pool", dest="out", default=None, help="the pool folder (default runs/pool/<split>)")
    p.add_argument("--attention", action="store_true",
                   help="also record the attention features and importance (warmstart, refine; large files)")
    p.add_argument("--rows", type=int, default=128, help="recomputed window rows of the NAMM to record for")
    _common(p)
    args = p.parse_args(argv)
    try:  # bad arguments are a usage error before anything loads, not a traceback
        shard = _shard(args.shard)
        lengths = parse_lengths(args.lengths)
    except ValueError as err:
        p.error(str(err))
    out = Path(args.out or f"runs/pool/{args.split}")
    build_pool(_load_model(args), out, args.split, args.tasks.split(","), lengths, args.n, shard, args.start,
               attention=args.attention, rows=args.rows)
    print(f"{len(load_pool(out, False))} prompts in {out}, {len(load_pool(out))} answered right by the full cache")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
