"""Next-best-product: quality on the time split and speed, side by side in one run.

    .venv/bin/python bench/bench_nbp.py [--customers 100000] [--repeats 3] [--write BENCHMARKS.md]

On a ``crmdata.synth`` world (generated once into /tmp/crmscore-bench, reused):

- quality: ``train_nbp`` with the CLI defaults; NDCG@10 of the model, the
  popularity baselines and the oracle on the same test customers;
- training: the wrapper (read + matrix build + fit + MLflow logging/registration)
  against a bare ``implicit`` fit of the same matrix with the same settings,
  interleaved ``--repeats`` times (medians), so load from other processes hits
  both alike; evaluation and the gate are reported beside it;
- top-10 for every customer: the batched path (``Recommender.rank`` and
  ``recommend_all`` with reasons) against a per-customer loop over implicit's
  ``recommend`` with the same exclusions, in customers/s.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine, median, write_section

log = logging.getLogger("bench_nbp")
ROOT = Path("/tmp/crmscore-bench")


#: What this script does not measure but a reader of the figures needs (docs/next-best-product.md).
NOTES = """
Notes (from the experiments in docs/next-best-product.md, not measured by this script):

- **The 0.85× oracle goal is not met** (0.81×). The oracle knows each customer's true taste vector;
  every model must infer it from the purchase history (median 11 orders). A learner that knew the
  true product factors exactly and fitted each customer's taste by MAP under the generator's own
  multinomial-logit model reached ≈ 0.210 NDCG@10 (≈ 0.88× oracle), so the attainable ceiling here is
  close to the goal, and ALS (which models "ever bought", not "how often") sits at ≈ 93 % of it. Tried
  and not enough: factors 4–32, alpha 0.3–30, regularization 0.1–30, half-life 120–5000 days, BPR
  (0.157–0.170), segment and industry as extra "items" (+0.002), a LightGBM lambdarank re-ranker over
  the top 40 ALS candidates (0.198 vs 0.191 for its own ALS, ≈ the popularity prior's gain, for a
  second training window and minutes of LightGBM: not kept).
- Wall-clock on this shared machine swings ±50 % between repeats (other sessions' jobs); the CPU-time
  ratio is the stable one. The first repeat of a process also pays one-time imports (matplotlib,
  MLflow's package scan).
"""


def world(customers: int, products: int, seed: int) -> Path:
    from crmdata.lake import MANIFEST
    from crmdata.synth import WorldConfig, generate_world

    lake = ROOT / f"nbp-world-{customers}-{products}-{seed}"
    if not (lake / MANIFEST).exists():
        shutil.rmtree(lake, ignore_errors=True)
        log.info("generating a %d-customer world into %s", customers, lake)
        generate_world(WorldConfig(customers=customers, products=products, seed=seed), lake)
    return lake


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for name in ("mlflow", "alembic", "matplotlib"):
        logging.getLogger(name).setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--products", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--loop-customers", type=int, default=20_000,
                        help="customers in the per-customer loop, extrapolated to all (0 = all)")
    parser.add_argument("--write", type=Path, default=None, help="BENCHMARKS.md to update")
    args = parser.parse_args()
    context = machine()

    import numpy as np
    from threadpoolctl import threadpool_limits

    lake = world(args.customers, args.products, args.seed)
    store = Path(tempfile.mkdtemp(prefix="nbp-mlflow-"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store}/mlflow.db"

    from training.nbp import NbpParams, train_nbp
    from training.nbp.interactions import owned_once, read_lake, time_split
    from training.nbp.train import make_model
    from training.registry import configure_mlflow, ensure_experiment
    from training.tasks import NBP

    # A training job meets an existing tracking store: create it (schema migrations) first.
    ensure_experiment(configure_mlflow(), NBP.model_name)
    params = NbpParams()
    data = read_lake(lake)
    split = time_split(data, NBP.window_days, None, params.confidence)
    matrix = split.train.confidence
    log.info("matrix: %d customers × %d products, %d non-zeros", *matrix.shape, matrix.nnz)

    wrapped = ("read", "matrix", "fit", "model", "log_and_register")
    bare, bare_cpu, wrapper, wrapper_cpu, results = [], [], [], [], []
    for r in range(args.repeats):
        with threadpool_limits(1, "blas"):  # as implicit asks, for the bare fit as for the wrapper
            model = make_model("als", params)
            t, c = time.perf_counter(), time.process_time()
            model.fit(matrix, show_progress=False)
            bare.append(time.perf_counter() - t)
            bare_cpu.append(time.process_time() - c)
        result = train_nbp(lake, params=params)
        results.append(result)
        s = result.seconds
        wrapper.append(sum(s[k] for k in wrapped))
        wrapper_cpu.append(sum(s[f"cpu.{k}"] for k in wrapped))
        log.info("repeat %d: bare fit %.1f s (cpu %.1f), wrapper %.1f s (cpu %.1f) (%s)", r + 1, bare[-1],
                 bare_cpu[-1], wrapper[-1], wrapper_cpu[-1], ", ".join(f"{k} {v:.1f}" for k, v in s.items()))
    stage = {k: median([res.seconds[k] for res in results]) for k in results[0].seconds}

    # --- top-10 for everyone: batched against a per-customer loop ------------------------------
    from training.nbp import load_recommender

    rec = load_recommender(alias="challenger")
    ids = rec.customer_ids
    t = time.perf_counter()
    rec.rank(ids, 10)
    batched = time.perf_counter() - t
    t = time.perf_counter()
    frame = rec.recommend_all(k=10)
    batched_reasons = time.perf_counter() - t
    assert frame["customer_id"].n_unique() == len(ids)

    from implicit.cpu.als import AlternatingLeastSquares

    als = AlternatingLeastSquares(factors=rec.item_factors.shape[1], regularization=rec.spec.regularization,
                                  alpha=1.0, num_threads=params.num_threads)
    als.user_factors, als.item_factors = rec.user_factors, rec.item_factors
    owned = owned_once(rec.history, rec.repeatable)
    rows = np.arange(len(ids))
    if args.loop_customers:
        rows = np.random.default_rng(0).choice(rows, args.loop_customers, replace=False)
    t = time.perf_counter()
    for u in rows:
        als.recommend(int(u), owned[int(u)], N=10, filter_already_liked_items=True)
    loop = (time.perf_counter() - t) * len(ids) / len(rows)
    sample = rows[:500]
    rec.recommend([str(ids[sample[0]])], k=10)  # builds the id index once, as a service does at start
    t = time.perf_counter()
    for u in sample:
        rec.recommend([str(ids[u])], k=10)
    serving = (time.perf_counter() - t) / len(sample)

    # --- report ------------------------------------------------------------------------------
    res = results[-1]
    m, b = res.metrics["overall"], res.baseline["overall"]
    sb, o = res.baseline["segment_popularity"]["overall"], (res.oracle or {}).get("overall")
    ndcg = m["ndcg_at_10"]
    data_line = (
        f"Data: a `crmdata.synth` world (seed {args.seed}) with {args.customers:,} customers, "
        f"{data.orders.height:,} product orders, {data.catalogue.n} products; time split at "
        f"{split.cutoff:%Y-%m-%d} (test = the next 30 days), matrix {matrix.shape[0]:,} × {matrix.shape[1]} "
        f"with {matrix.nnz:,} non-zeros, {int(m['users']):,} test customers. CLI defaults: ALS, "
        f"{params.factors} factors, regularization {params.regularization}, {params.iterations} iterations, "
        f"alpha {params.alpha}, half-life {params.half_life_days:.0f} days, popularity weight "
        f"{params.popularity_weight}, min orders {params.min_orders}."
    )
    lines = [
        f"`bench/bench_nbp.py --customers {args.customers} --repeats {args.repeats}`, {context}.",
        data_line,
        "",
        "| quality (same test customers) | NDCG@10 | HR@10 | P@10 | R@10 | MAP@10 | coverage@10 | model ÷ this |",
        "|---|---|---|---|---|---|---|---|",
    ]
    policies = [("model (ALS + popularity prior)", m), ("popularity", b), ("segment popularity", sb)]
    if o:
        policies.append(("oracle (true affinities)", o))
    for name, v in policies:
        lines.append(f"| {name} | {v['ndcg_at_10']:.4f} | {v['hit_rate_at_10']:.4f} | {v['precision_at_10']:.4f} | "
                     f"{v['recall_at_10']:.4f} | {v['map_at_10']:.4f} | {v['coverage_at_10']:.3f} | "
                     f"{ndcg / v['ndcg_at_10']:.3f} |")
    goal_pop = ndcg / b["ndcg_at_10"]
    goal_oracle = ndcg / o["ndcg_at_10"] if o else float("nan")
    ratio = median(wrapper) / median(bare)
    cpu_ratio = median(wrapper_cpu) / median(bare_cpu)
    sampled = f" (extrapolated from {len(rows):,})" if args.loop_customers else ""
    lines += [
        "",
        (f"Goals: NDCG@10 ≥ 1.5× popularity → **{goal_pop:.2f}×** ({'met' if goal_pop >= 1.5 else 'not met'}); "
         f"≥ 0.85× oracle → **{goal_oracle:.3f}×** ({'met' if goal_oracle >= 0.85 else 'not met'})."),
        "",
        "| speed (medians of the repeats) | seconds | goal |",
        "|---|---|---|",
        f"| bare `implicit` ALS fit of the same matrix | {median(bare):.2f} | |",
        (f"| wrapper: read {stage['read']:.2f} + matrix {stage['matrix']:.2f} + fit {stage['fit']:.2f} + "
         f"recommender arrays {stage['model']:.2f} + MLflow log/register {stage['log_and_register']:.2f} | "
         f"{median(wrapper):.2f} (**{ratio:.2f}× bare**) | ≤ 1.5× |"),
        (f"| same in process CPU seconds (all threads; insensitive to other processes): bare "
         f"{median(bare_cpu):.2f}, wrapper {median(wrapper_cpu):.2f} | **{cpu_ratio:.2f}× bare** | ≤ 1.5× |"),
        (f"| besides: evaluation (4 policies, k ≤ 20) {stage['evaluate']:.2f} + gate {stage['gate']:.2f}; "
         f"`train_nbp` total | {stage['total']:.2f} | |"),
        (f"| top-10 for all {len(ids):,} customers, batched (`Recommender.rank`) | {batched:.2f} "
         f"({len(ids) / batched:,.0f} customers/s, **{loop / batched:.0f}× the loop**) | ≥ 10× |"),
        (f"| same with reasons, long frame (`recommend_all`, what batch scoring writes) | {batched_reasons:.2f} "
         f"({len(ids) / batched_reasons:,.0f} customers/s, {loop / batched_reasons:.0f}× the loop) | |"),
        (f"| per-customer loop over implicit's `recommend` (same exclusions) | {loop:.2f} "
         f"({len(ids) / loop:,.0f} customers/s){sampled} | |"),
        f"| one customer through `Recommender.recommend` (serving path, with reasons) | {serving * 1000:.2f} ms | |",
        "",
        (f"Per repeat, wall: bare {', '.join(f'{x:.2f}' for x in bare)} s, wrapper "
         f"{', '.join(f'{x:.2f}' for x in wrapper)} s; CPU: bare {', '.join(f'{x:.2f}' for x in bare_cpu)} s, "
         f"wrapper {', '.join(f'{x:.2f}' for x in wrapper_cpu)} s."),
        f"Load average at the end: {os.getloadavg()[0]:.1f}.",
    ]
    body = "\n".join(lines) + "\n" + NOTES
    print(body)
    if args.write:
        write_section("next-best-product", body, args.write)
    shutil.rmtree(store, ignore_errors=True)


if __name__ == "__main__":
    main()
