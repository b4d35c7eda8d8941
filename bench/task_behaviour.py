"""Does the memory forget what the NAMM paper says a learned memory forgets? (issue 21, item 4)

    OMP_NUM_THREADS=1 .venv/bin/python bench/task_behaviour.py --threads 1 --docs 4 --tokens 1536

The paper (arXiv 2410.13166) reports that its evolved memories drop comments and whitespace in
code and grammatical redundancy in prose. This reads held-out documents of the test split
(Python standard-library code and prose, namm/tasks/sources.py) with each policy at the same
budget, takes the retention map of the memory as reading left it (namm.retention: per token,
the share of layers and KV heads that still hold it), and sums it by kind of token:
- code (Python's own tokenizer on the text): comments, whitespace (indentation, blank lines,
  spaces), keywords, identifiers, literals (strings and numbers), operators;
- prose: function words (a fixed list of English articles, pronouns, prepositions,
  conjunctions, auxiliaries), content words, punctuation and whitespace.
Each cell is the share of that kind's (token, layer, head) entries EVICTED. The paper's
behaviour is: comments and whitespace evicted more than identifiers and literals; function
words more than content words. `namm` is evaluated only where a trained scorer ships (the
shipped one is all zeros and is refused: docs/evolution.md).
"""
from __future__ import annotations

import argparse
import io
import keyword
import re
import time
import tokenize

import torch

import namm
from namm.errors import NoTrainedScorerError
from namm.retention import document_retention
from namm.tasks.sources import code_modules, prose_docs

FUNCTION_WORDS = set("""a about above after again against all am an and any are as at be because been before
being below between both but by can could did do does doing down during each few for from further had has
have having he her here hers herself him himself his how i if in into is it its itself just me more most my
myself no nor not now of off on once only or other our ours ourselves out over own same she should so some
such than that the their theirs them themselves then there these they this those through to too under until
up very was we were what when where which while who whom why will with would you your yours yourself
yourselves also may might must shall upon whether either neither however thus hence via per""".split())
CODE_KINDS = ("comment", "whitespace", "keyword", "identifier", "literal", "operator")
PROSE_KINDS = ("function word", "content word", "punctuation", "whitespace")


def code_kinds(text: str) -> list[str]:
    """The kind of each character of Python source `text`."""
    kinds = ["whitespace" if ch.isspace() else "operator" for ch in text]
    starts = [0]
    for line in text.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            (r0, c0), (r1, c1) = tok.start, tok.end
            if r0 > len(starts) - 1 or r1 > len(starts) - 1:
                continue
            lo, hi = starts[r0 - 1] + c0, starts[r1 - 1] + c1
            if tok.type == tokenize.COMMENT:
                kind = "comment"
            elif tok.type in (tokenize.STRING, tokenize.NUMBER) or tok.type == getattr(tokenize, "FSTRING_MIDDLE", -1):
                kind = "literal"
            elif tok.type == tokenize.NAME:
                kind = "keyword" if keyword.iskeyword(tok.string) or keyword.issoftkeyword(tok.string) else "identifier"
            else:
                continue
            for i in range(lo, min(hi, len(kinds))):
                if kind == "literal" or not text[i].isspace():
                    kinds[i] = kind
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass  # a cut unit at the end: its characters keep the plain kinds
    return kinds


def prose_kinds(text: str) -> list[str]:
    kinds = ["whitespace" if ch.isspace() else "punctuation" for ch in text]
    for m in re.finditer(r"[A-Za-z][A-Za-z'-]*", text):
        kind = "function word" if m.group().lower() in FUNCTION_WORDS else "content word"
        for i in range(m.start(), m.end()):
            kinds[i] = kind
    return kinds


def piece_kinds(pieces: list[str], char_kinds: list[str]) -> list[str | None]:
    """Each token piece's kind: its first non-space character's (whitespace if it has none)."""
    out, at = [], 0
    for piece in pieces:
        kind = None
        for j, ch in enumerate(piece):
            if at + j < len(char_kinds) and not ch.isspace():
                kind = char_kinds[at + j]
                break
        out.append(kind or ("whitespace" if piece else None))
        at += len(piece)
    return out


def documents(kind: str, n: int, max_chars: int) -> list[str]:
    if kind == "code":
        docs = ["\n\n\n".join(u.text for u in units) for _, units in code_modules("test")]
    else:
        docs = [d.text for d in prose_docs("test")]
    return [d[:max_chars].rsplit("\n", 1)[0] if kind == "code" else d[:max_chars] for d in docs[:n]]


def evicted_by_kind(lm, texts: list[str], kinds_of, kinds: tuple[str, ...], policy: str, budget) -> dict:
    kept = {k: 0.0 for k in kinds}
    count = {k: 0 for k in kinds}
    for text in texts:
        text = text.strip()
        memory = namm.read_document(lm, text, policy=policy, budget=budget)
        rmap = document_retention(memory, text)
        for kind, share in zip(piece_kinds(rmap.pieces, kinds_of(rmap.text)), rmap.shares):
            if kind in kept:
                kept[kind] += share
                count[kind] += 1
    return {k: (1.0 - kept[k] / count[k]) if count[k] else None for k in kinds} | {"_tokens": count}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policies", default="surprisal,streaming_llm,h2o,snapkv,namm")
    p.add_argument("--budget", type=float, default=0.28, help="kept fraction, the same for every policy")
    p.add_argument("--docs", type=int, default=4, help="documents of each kind (test split)")
    p.add_argument("--tokens", type=int, default=1536, help="about this many tokens per document")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--namm-checkpoint", default=None, help="the NAMM file `namm` reads (default: the shipped one)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = namm.load_model()
    budget = namm.Budget.fraction(args.budget)
    chars = args.tokens * 4  # ~4 characters per token in English and Python
    corpora = {"code": (documents("code", args.docs, chars), code_kinds, CODE_KINDS),
               "prose": (documents("prose", args.docs, chars), prose_kinds, PROSE_KINDS)}
    started = time.perf_counter()
    print(f"# share of each kind's (token, layer, head) entries evicted; budget {args.budget} kept; "
          f"{args.docs} test-split documents of each kind, ~{args.tokens} tokens each; {lm.name}")
    for corpus, (texts, kinds_of, kinds) in corpora.items():
        print(f"\n## {corpus}\n")
        print("| policy | " + " | ".join(kinds) + " | paper's behaviour? |")
        print("|---" * (len(kinds) + 2) + "|")
        for policy in args.policies.split(","):
            chosen = policy
            if policy == "namm" and args.namm_checkpoint:  # an evolved file that does not ship
                chosen = namm.make_policy("namm", budget, checkpoint=args.namm_checkpoint, model_name=lm.name)
            try:
                ev = evicted_by_kind(lm, texts, kinds_of, kinds, chosen, budget)
            except NoTrainedScorerError:
                print(f"| {policy} | " + " | ".join("-" for _ in kinds) + " | not evaluated: no trained scorer ships |")
                continue
            if corpus == "code":
                noise = [ev[k] for k in ("comment", "whitespace") if ev[k] is not None]
                signal = [ev[k] for k in ("identifier", "literal") if ev[k] is not None]
                verdict = "yes" if noise and signal and min(noise) > max(signal) else "no"
            else:
                verdict = "yes" if ev["function word"] > ev["content word"] else "no"
            cells = " | ".join("-" if ev[k] is None else f"{ev[k]:.2f}" for k in kinds)
            print(f"| {policy} | {cells} | {verdict} |", flush=True)
        counts = ev["_tokens"] if "ev" in locals() and isinstance(ev, dict) else {}
        print("\ntokens per kind: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    print(f"\n({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
