"""Knowledge-circuit speed and quality: EAP and EAP-IG against exact edge patching.

For the default model (SmolLM2-135M, 30 layers, GQA, 70,651 edges) and a tiny GPT-2:

* seconds and peak memory of EAP and of EAP-IG (5 steps) on one ~10-token fact (peak memory:
  CUDA peak allocated on a GPU, else the peak resident-set growth sampled every 5 ms);
* Pearson and Spearman correlation of each method's scores with the exact effect of patching
  each edge alone (one exactly patched forward pass per edge) on a sample of edges: the
  top-scored edges plus a random sample;
* the faithfulness curve of an EAP-IG circuit for a batch of one bundled relation, and the
  smallest edge fraction on it that reaches faithfulness 0.8.

Prints a table and writes JSON under benchmarks/results/.

    python benchmarks/bench_circuits.py                   # default model + tiny GPT-2
    python benchmarks/bench_circuits.py --sample 20 --skip-curve
"""

from __future__ import annotations

import argparse
import json
import platform
import threading
import time
from pathlib import Path

import psutil
import torch

from knowscope.circuits import eap
from knowscope.circuits.batches import make_batch, noise_scale
from knowscope.circuits.graph import Graph
from knowscope.circuits.pruning import faithfulness_curve, normalized_faithfulness
from knowscope.facts import Fact, load_bundled_facts
from knowscope.models import load_model, tiny_model

FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)


class PeakMemory:
    """Peak memory growth during a block: CUDA peak allocated, else sampled RSS."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.peak_mb = 0.0

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.proc = psutil.Process()
            self.base = self.proc.memory_info().rss
            self.top = self.base
            self.stop = threading.Event()
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.stop.is_set():
            self.top = max(self.top, self.proc.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            self.peak_mb = (torch.cuda.max_memory_allocated() - self.base) / 2**20
        else:
            self.stop.set()
            self.thread.join()
            self.peak_mb = (self.top - self.base) / 2**20


def _ranks(x: torch.Tensor) -> torch.Tensor:
    return torch.argsort(torch.argsort(x)).float()


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    return float((a * b).sum() / (a.norm() * b.norm() + 1e-30))


def exact_edge_effects(
    model, graph: Graph, batch, edges: list[tuple[int, int]], corrupted, clean_metric
) -> torch.Tensor:
    """metric(only edge u->v corrupted) - metric(clean), averaged over the batch, per edge."""
    out = []
    for u, v in edges:
        mask = graph.edge_mask.clone()
        mask[u, v] = False
        m = eap.patched_metric(model, graph, batch, mask, "logit_diff", corrupted)
        out.append(float((m - clean_metric).mean()))
    return torch.tensor(out)


def bench_model(name: str, model, fact: Fact, contrast_subject: str | None, sample: int, seed: int) -> dict:
    graph = Graph.from_model(model)
    corruption = "swap" if contrast_subject else "noise"
    kwargs = {"contrast_subjects": [contrast_subject]} if contrast_subject else {"scale": noise_scale(model)}
    batch = make_batch(model, [fact], corruption, seed=seed, **kwargs)
    row: dict = {"model": name, "n_edges": graph.n_edges, "tokens": int(batch.clean.shape[1]),
                 "prompt": batch.prompts[0], "corrupted": batch.corrupted_prompts[0], "corruption": corruption}
    results = {}
    for method, steps in (("eap", 1), ("eap-ig", 5)):
        with torch.no_grad():
            model.bridge(batch.clean)  # warm-up
        with PeakMemory(model.device) as mem:
            t0 = time.perf_counter()
            a = eap.attribute(model, batch, method, ig_steps=steps)
            seconds = time.perf_counter() - t0
        results[method] = a
        row[f"{method}_seconds"] = seconds
        row[f"{method}_peak_mb"] = mem.peak_mb
    a = results["eap-ig"]
    gen = torch.Generator().manual_seed(seed)
    flat = torch.where(graph.edge_mask, a.scores.abs(), torch.full_like(a.scores, -1)).flatten()
    top = torch.topk(flat, sample // 2).indices.tolist()
    all_edges = graph.edge_mask.flatten().nonzero().flatten()
    rand = all_edges[torch.randperm(all_edges.numel(), generator=gen)[: sample - len(top)]].tolist()
    idx = list(dict.fromkeys(top + rand))
    edges = [(i // graph.n_slots, i % graph.n_slots) for i in idx]
    t0 = time.perf_counter()
    exact = exact_edge_effects(model, graph, batch, edges, a.corrupted_outputs, a.metric_clean)
    row["exact_seconds_per_edge"] = (time.perf_counter() - t0) / len(edges)
    row["sampled_edges"] = len(edges)
    for method, att in results.items():
        s = torch.tensor([float(att.scores[u, v]) for u, v in edges])
        row[f"{method}_pearson"] = _pearson(s, exact)
        row[f"{method}_spearman"] = _pearson(_ranks(s), _ranks(exact))
    row["metric_clean"] = float(a.metric_clean.mean())
    row["metric_corrupted"] = float(a.metric_corrupted.mean())
    return row


def bench_curve(model, relation: str, n_facts: int, seed: int) -> dict:
    facts = load_bundled_facts(relation=relation, limit=n_facts)
    batch = make_batch(model, facts, "swap", seed=seed)
    graph = Graph.from_model(model)
    t0 = time.perf_counter()
    a = eap.attribute(model, batch, "eap-ig", ig_steps=5)
    attribution_seconds = time.perf_counter() - t0
    sizes = [max(1, int(f * graph.n_edges)) for f in FRACTIONS]
    t0 = time.perf_counter()
    curve = faithfulness_curve(model, a, batch, sizes)
    curve_seconds = time.perf_counter() - t0
    reach = [fr for fr, f in zip(curve["fraction"], curve["faithfulness"], strict=True) if f >= 0.8]
    full = eap.patched_metric(model, graph, batch, graph.edge_mask, "logit_diff", a.corrupted_outputs)
    return {
        "relation": relation, "facts": batch.prompts, "corrupted": batch.corrupted_prompts,
        "answers": batch.answers, "contrasts": batch.contrasts,
        "metric_clean": float(a.metric_clean.mean()), "metric_corrupted": float(a.metric_corrupted.mean()),
        "full_graph_faithfulness": normalized_faithfulness(full, a.metric_clean, a.metric_corrupted),
        "curve": curve, "fraction_at_0.8": min(reach) if reach else None,
        "attribution_seconds": attribution_seconds, "curve_seconds": curve_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=int, default=30, help="edges to patch exactly per model (default 40)")
    parser.add_argument("--relation", default="P37", help="bundled relation for the faithfulness curve")
    parser.add_argument("--curve-facts", type=int, default=3)
    parser.add_argument("--skip-curve", action="store_true")
    parser.add_argument("--device", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_circuits.json"))
    args = parser.parse_args()

    rows = []
    tiny = tiny_model("gpt2")
    tiny_fact = Fact(subject="France", prompt="The capital city of {} is the town of", target_true="Paris",
                     target_new="Rome")
    rows.append(bench_model("tiny-gpt2", tiny, tiny_fact, None, args.sample, args.seed))
    model = load_model(device=args.device)
    fact = next((f for f in load_bundled_facts(relation="P17") if f.subject == "Tokyo"), None) or Fact(
        subject="Tokyo", prompt="{} is a city in the country of", target_true="Japan", target_new="China")
    rows.append(bench_model(model.name, model, fact, "Beijing", args.sample, args.seed))
    curve = None if args.skip_curve else bench_curve(model, args.relation, args.curve_facts, args.seed)

    cols = ["model", "n_edges", "tokens", "eap_seconds", "eap-ig_seconds", "eap_peak_mb", "eap-ig_peak_mb",
            "eap_pearson", "eap-ig_pearson", "eap-ig_spearman", "exact_seconds_per_edge"]
    print(" | ".join(f"{c:>16}" for c in cols))
    for r in rows:
        print(" | ".join(f"{r[c]:>16.3f}" if isinstance(r[c], float) else f"{r[c]!s:>16}" for c in cols))
    if curve:
        print(f"\nfaithfulness curve, relation {curve['relation']} ({len(curve['facts'])} facts, EAP-IG 5 steps):")
        for fr, n, f in zip(curve["curve"]["fraction"], curve["curve"]["n_edges"], curve["curve"]["faithfulness"],
                            strict=True):
            print(f"  {100 * fr:6.2f}% ({n:>5} edges): {f:.3f}")
        print(f"smallest fraction reaching 0.8: {curve['fraction_at_0.8']}")
    out = {"rows": rows, "curve": curve, "torch": torch.__version__, "platform": platform.platform(),
           "cpu_count": psutil.cpu_count(), "device": str(model.device), "load_average": list(psutil.getloadavg())}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
