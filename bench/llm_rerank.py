"""A small LLM as the reader of recall's candidates (issue 21): does it pay? Measurement only; nothing
of it is in the product. One command per model:

    pip install gguf accelerate          # transformers reads GGUF files with them; not optimem's deps
    python bench/llm_rerank.py --gguf PATH/model.gguf [--depth 20] [--split tune] [--out F]

Each question of the set's ``--split`` half (``tune`` while choosing; never ``heldout`` before a
lever is chosen) is ranked by the default find step (``bench/recall.py``'s ``found_turns``, the
``stems`` model on); its first ``--depth`` candidates are scored by query likelihood (UPR, Sachan et
al. 2022): the mean log-probability of the question's tokens after "A part of a chat:\\n<turn
before>\\n<turn>\\n\\nA question someone asked later about it:", speakers as the sessions name them,
each turn cut at 60 words. The score's z-score over the candidates, times w, is added to
-log(rank + 1) of the default ranking. Prints recall@5 per kind for each w at depths 10 and
``--depth``, the model alone, and a question's reading time (seconds and CPU-seconds, p50).

The model is de-quantized to fp32 and run on the CPU (torch's threads: every core).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from recall import TENANT, found_turns, import_session, share  # noqa: E402
from recall_set import questions as question_set, sessions as set_sessions  # noqa: E402
from optimem.memory.lab.common import machine  # noqa: E402
from optimem.memory.redis_server import EmbeddedRedis  # noqa: E402
from optimem.memory.service import Memory  # noqa: E402
from optimem.settings import Settings  # noqa: E402

WEIGHTS = (0.1, 0.25, 0.5, 1.0, 2.0)
KINDS = ("fact", "when", "two", "inference", "all")


def candidates(split: str, depth: int) -> list[dict]:
    """The split's questions with the default ranking's first ``depth`` turns."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedRedis(Path(tmp)).start()
        try:
            settings = Settings.from_env(None, data_dir=Path(tmp), redis_url=f"unix://{server.socket}", worker=False)
            with Memory(settings) as memory:
                for name, turns in set_sessions().items():
                    import_session(memory, f"set-{name}", turns)
                    for q in question_set():
                        if q["session"] == name and q["split"] == split:
                            out.append({**q, "top": found_turns(memory, f"set-{name}", q["question"], depth)})
        finally:
            server.stop()
    return out


def scorer(path: Path):
    """query-likelihood(question, turns) for the GGUF model at ``path``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()

    def score(question: str, contexts: list[str]) -> list[float]:
        asked = tok(" " + question, add_special_tokens=False)["input_ids"]
        heads = [tok(c, add_special_tokens=False)["input_ids"] for c in contexts]
        width = max(len(h) for h in heads) + len(asked)
        ids = torch.full((len(heads), width), tok.pad_token_id or 0)
        mask = torch.zeros((len(heads), width), dtype=torch.long)
        for i, head in enumerate(heads):
            ids[i, :len(head) + len(asked)] = torch.tensor(head + asked)
            mask[i, :len(head) + len(asked)] = 1
        with torch.inference_mode():
            hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
            out = []
            for i, head in enumerate(heads):      # the vocabulary's logits only where the question is
                at = torch.arange(len(head) - 1, len(head) - 1 + len(asked))
                logp = model.lm_head(hidden[i, at]).float().log_softmax(-1)
                out.append(logp[torch.arange(len(asked)), torch.tensor(asked)].mean().item())
        return out
    return score


def context(turns: list[dict], t: int) -> str:
    def line(i: int) -> str:
        return f"{turns[i].get('role', 'someone')}: {' '.join(turns[i]['content'].split()[:60])}"
    before = line(t - 1) + "\n" if t > 0 else ""
    return f"A part of a chat:\n{before}{line(t)}\n\nA question someone asked later about it:"


def recall_at_5(rows: list[dict], depth: int, w: float | None) -> dict[str, float]:
    """recall@5 by kind with the LLM's z-score x w mixed into the first ``depth`` (None: the LLM alone)."""
    got: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for r in rows:
        top, u = r["top"][:depth], np.array(r["llm"][:depth])
        z = (u - u.mean()) / (u.std() or 1.0)
        s = z if w is None else -np.log1p(np.arange(len(top))) + w * z
        order = [top[i] for i in np.argsort(-s, kind="stable")] + r["top"][depth:]
        for kind in (r["kind"], "all"):
            got[kind].append(share(r["evidence"], order, 5))
    return {kind: round(float(np.mean(v)), 3) for kind, v in got.items() if v}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gguf", type=Path, required=True, help="a local GGUF file (no download)")
    ap.add_argument("--depth", type=int, default=20, help="candidates the model rereads")
    ap.add_argument("--split", default="tune")
    ap.add_argument("--questions", type=int, default=0, help="only the first N (a quick check)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "llm_rerank.json"))
    args = ap.parse_args()
    rows = candidates(args.split, args.depth)[:args.questions or None]
    score, sets = scorer(args.gguf), set_sessions()
    for n, r in enumerate(rows):
        t0, c0 = time.perf_counter(), time.process_time()
        r["llm"] = score(r["question"], [context(sets[r["session"]], t) for t in r["top"]])
        r["s"], r["cpu_s"] = round(time.perf_counter() - t0, 2), round(time.process_time() - c0, 2)
        print(f"\r{n + 1}/{len(rows)} questions read", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    table = {"default ranking": recall_at_5(rows, args.depth, 0.0)}
    for depth in sorted({10, args.depth}):
        table.update({f"depth {depth}, w {w}": recall_at_5(rows, depth, w) for w in WEIGHTS})
        table[f"depth {depth}, the model alone"] = recall_at_5(rows, depth, None)
    wall, cpu = (float(np.median([r[key] for r in rows])) for key in ("s", "cpu_s"))
    print(f"{args.gguf.name}, {args.split} ({len(rows)} questions), recall@5; a question's reading p50: "
          f"{wall} s, {cpu} CPU-s")
    print(f"{'':32}" + "".join(f"{k:>10}" for k in KINDS))
    for name, row in table.items():
        print(f"{name:32}" + "".join(f"{row.get(k, float('nan')):>10}" for k in KINDS))
    Path(args.out).write_text(json.dumps({"machine": machine(), "model": str(args.gguf), "split": args.split,
                                          "depth": args.depth, "s_p50": wall, "cpu_s_p50": cpu, "recall_at_5": table,
                                          "rows": rows}, indent=1, ensure_ascii=False))
    print(f"JSON: {args.out}")


if __name__ == "__main__":
    main()
