"""Exact TreeSHAP contributions of a LightGBM booster at a few times the cost of a predict.

``TreeExplainer.of(booster)`` reads the trees once (``dump_model``) and precomputes
per-leaf tables; ``contributions(x)`` then gives, for every row, what
``booster.predict(x, pred_contrib=True)`` gives: rows × (features + 1), the last
column the expected value, equal to LightGBM's within float rounding (~1e-14), at
~7-10x a bare predict instead of pred_contrib's ~80-90x (BENCHMARKS.md, "reasons").

Why it is exact and why it is fast (path-dependent TreeSHAP, as LightGBM computes it):
a leaf ``l`` with value ``v`` and the distinct features ``U`` (``d`` of them) split on
its root path adds to feature ``i`` in ``U``

    φ_i = v · (p_i − z_i) · W_i,   W_i = Σ_k w(d, k) · [t^k] Π_{j∈U, j≠i} (z_j + p_j t),
    w(d, k) = k!(d−1−k)!/d!

where ``z_j`` is the share of training rows (LightGBM's counts) that follow the path at
``j``'s splits and ``p_j`` is 1 when the row satisfies all of ``j``'s conditions on the
path, else 0. The row enters only through those ``d`` bits, and W_i only through the
other d − 1: so each leaf's W_i are tabled once for all 2^(d−1) patterns of the others
(FastTreeSHAP's "v2" idea, at half its memory) and a row costs one table read and one
multiply per (leaf, path feature). Leaves with more than ``MAX_TABLE_DEPTH`` distinct
features (or past the memory budget, deepest first) are computed per row by the same
formula in O(d²). The expected value is Σ_l v_l · count_l / count_root.

The split decisions are LightGBM's own (``tree.h``): numerical ``x <= threshold`` with
missing types None / Zero / NaN and ``default_left`` (NaN counts as 0 unless the missing
type is NaN; "zero" is |x| <= 1e-35), categorical bitsets (NaN and negatives go right,
other values are truncated to int); inputs with |x| <= 1e-35 are 0, as LightGBM's dense
row reader drops them.

The kernels are numba, compiled once per machine (``cache=True``) and run without the
GIL; more than one thread splits the rows between Python threads (no numba parallel
layer, so callers already running in threads, like the batch engine, are safe).
"""

from __future__ import annotations

import logging
import math
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numba import njit

if TYPE_CHECKING:
    import lightgbm as lgb

log = logging.getLogger(__name__)

#: Leaves with more distinct path features than this get no table (computed per row instead):
#: a leaf's table holds 2^(d−1)·d float64, 40 KiB at d = 10.
MAX_TABLE_DEPTH = 10
#: ... and the tables of one booster stay under this (the deepest leaves go first).
MAX_TABLE_BYTES = 64 << 20
#: Rows explained together, tree by tree: a tree's tables stay in cache across the block.
ROW_BLOCK = 256
#: LightGBM's kZeroThreshold (a float 1e-35 widened to double).
ZERO = float(np.float32(1e-35))
_NUMERICAL, _CATEGORICAL = 0, 1
_MISSING = {"None": 0, "Zero": 1, "NaN": 2}


@dataclass(frozen=True)
class _Forest:
    """The trees as flat arrays (all trees back to back), what the kernels read.

    Internal nodes of a tree are numbered as LightGBM numbers them, so a parent comes before
    its children; a child reference ``c >= 0`` is an internal node, ``~c`` a leaf.
    """

    tree_node: np.ndarray  # int64[trees + 1]: first internal node of each tree
    tree_leaf: np.ndarray  # int64[trees + 1]: first leaf of each tree
    feature: np.ndarray  # int64[nodes]
    threshold: np.ndarray  # float64[nodes]
    kind: np.ndarray  # int8[nodes]: numerical / categorical
    missing: np.ndarray  # int8[nodes]: None / Zero / NaN
    default_left: np.ndarray  # bool[nodes]
    cat_start: np.ndarray  # int64[nodes + 1]: a categorical node's bitset words in cat_bits
    cat_bits: np.ndarray  # uint32[...]
    left: np.ndarray  # int64[nodes]: child (>= 0 node, < 0 ~leaf), tree-local
    right: np.ndarray  # int64[nodes]
    slot: np.ndarray  # int64[nodes]: the bit of this node's feature in the patterns below it
    leaf_value: np.ndarray  # float64[leaves]
    leaf_d: np.ndarray  # int64[leaves]: distinct features on the path
    leaf_feat: np.ndarray  # int64[leaves + 1]: start of the leaf's features in feats / zs
    feats: np.ndarray  # int64[...]: the leaf's distinct path features, in slot order
    zs: np.ndarray  # float64[...]: their zero fractions
    leaf_table: np.ndarray  # int64[leaves]: offset in tables, or -1 (computed per row)
    tables: np.ndarray  # float64[...]
    weights: np.ndarray  # float64[depth + 1, depth]: w(d, k)
    expected: float  # Σ of the trees' expected values (the bias column)
    table_depth: int  # leaves with up to this many distinct features have tables


class TreeExplainer:
    """A booster's exact contributions; build once per booster (``of``), call per batch."""

    def __init__(self, forest: _Forest, n_features: int) -> None:
        self._forest = forest
        self.n_features = n_features

    @classmethod
    def of(cls, booster: lgb.Booster, max_table_depth: int = MAX_TABLE_DEPTH,
           max_table_bytes: int = MAX_TABLE_BYTES) -> TreeExplainer:
        """Parse ``booster``'s trees (those ``predict`` uses: up to its best iteration, if set) and
        precompute the tables: leaves of up to ``max_table_depth`` distinct path features, fewer
        if the tables would pass ``max_table_bytes``."""
        model = booster.dump_model()
        if model.get("num_tree_per_iteration", 1) != 1:
            raise ValueError("TreeExplainer explains single-output boosters (binary, regression) only")
        trees = model["tree_info"]
        if any(t.get("is_linear") for t in trees):
            raise ValueError("TreeExplainer does not explain linear trees")
        explainer = cls(_build(trees, max_table_depth, max_table_bytes), int(model["max_feature_idx"]) + 1)
        # Compile (or load from numba's cache) the kernel now rather than on the first request.
        explainer.contributions(np.zeros((1, explainer.n_features)))
        return explainer

    @property
    def expected_value(self) -> float:
        return self._forest.expected

    @property
    def table_bytes(self) -> int:
        """Memory of the precomputed tables (the rest of the forest is a few arrays of nodes)."""
        return int(self._forest.tables.nbytes)

    @property
    def table_depth(self) -> int:
        """Leaves with up to this many distinct path features are tabled (the rest computed per row)."""
        return self._forest.table_depth

    @property
    def nbytes(self) -> int:
        """Memory of all its arrays (tables included)."""
        f = self._forest
        return sum(a.nbytes for a in vars(f).values() if isinstance(a, np.ndarray))

    def contributions(self, x: np.ndarray, threads: int = 1) -> np.ndarray:
        """``pred_contrib``'s output for ``x`` (rows × features): rows × (features + 1)."""
        x = np.ascontiguousarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"expected rows × {self.n_features} features, got shape {x.shape}")
        out = np.zeros((x.shape[0], self.n_features + 1), dtype=np.float64)
        out[:, -1] = self._forest.expected
        n = x.shape[0]
        threads = max(1, min(threads, n // ROW_BLOCK or 1))
        if threads == 1:
            self._run(x, out, 0, n)
        else:
            # Whole blocks per thread; each writes its own rows of out.
            bounds = [n * i // threads for i in range(threads + 1)]
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(lambda i: self._run(x, out, bounds[i], bounds[i + 1]), range(threads)))
        return out

    def _run(self, x: np.ndarray, out: np.ndarray, lo: int, hi: int) -> None:
        f = self._forest
        _explain(x, out, lo, hi, f.tree_node, f.tree_leaf, f.feature, f.threshold, f.kind, f.missing,
                 f.default_left, f.cat_start, f.cat_bits, f.left, f.right, f.slot, f.leaf_value, f.leaf_d,
                 f.leaf_feat, f.feats, f.zs, f.leaf_table, f.tables, f.weights, ROW_BLOCK)


#: booster -> its explainer, for as long as the booster lives (a reloaded model gets a new one).
_EXPLAINERS: weakref.WeakKeyDictionary[Any, TreeExplainer] = weakref.WeakKeyDictionary()
_BUILDING = threading.Lock()


def explainer_for(booster: lgb.Booster) -> TreeExplainer:
    """``booster``'s explainer, built on first use and then shared: the batch engine's threads
    and the service's requests ask for it at once, and one build (~0.1–1 s) is enough."""
    with _BUILDING:
        explainer = _EXPLAINERS.get(booster)
        if explainer is None:
            started = time.perf_counter()
            explainer = _EXPLAINERS[booster] = TreeExplainer.of(booster)
            log.info("TreeSHAP tables for %d trees: %.1f MiB in %.2f s", booster.num_trees(),
                     explainer.table_bytes / 2**20, time.perf_counter() - started)
    return explainer


# -- reading the trees ------------------------------------------------------------------------


def _build(trees: list[dict[str, Any]], max_table_depth: int, max_table_bytes: int) -> _Forest:
    nodes: dict[str, list[Any]] = {k: [] for k in ("feature", "threshold", "kind", "missing", "default_left",
                                                   "left", "right", "slot")}
    cat_words: list[np.ndarray] = []
    cat_start = [0]
    leaves: dict[str, list[Any]] = {k: [] for k in ("value", "d", "feats", "zs")}
    tree_node, tree_leaf = [0], [0]
    expected = 0.0
    for tree in trees:
        root = tree["tree_structure"]
        if "leaf_value" in root:  # a one-leaf tree: a constant, all bias
            expected += float(root["leaf_value"])
        else:
            expected += _add_tree(root, nodes, cat_words, cat_start, leaves)
        tree_node.append(len(nodes["feature"]))
        tree_leaf.append(len(leaves["value"]))
    depth = max([len(f) for f in leaves["feats"]], default=0)
    leaf_d = np.array([len(f) for f in leaves["feats"]], dtype=np.int64)
    if depth > 62:
        raise ValueError(f"a leaf has {depth} distinct features on its path; at most 62 are supported")

    def sizes_at(cap: int) -> np.ndarray:  # table entries of each leaf with tables up to cap features
        return np.where(leaf_d <= cap, (1 << np.clip(leaf_d - 1, 0, cap)) * leaf_d, 0)

    while max_table_depth > 0 and int(sizes_at(max_table_depth).sum()) * 8 > max_table_bytes:
        max_table_depth -= 1
    sizes = sizes_at(max_table_depth)
    leaf_feat = np.concatenate([[0], np.cumsum(leaf_d)]).astype(np.int64)
    leaf_table = np.where(leaf_d <= max_table_depth, np.concatenate([[0], np.cumsum(sizes)[:-1]]), -1)
    forest = _Forest(
        tree_node=np.array(tree_node, dtype=np.int64),
        tree_leaf=np.array(tree_leaf, dtype=np.int64),
        feature=np.array(nodes["feature"], dtype=np.int64),
        threshold=np.array(nodes["threshold"], dtype=np.float64),
        kind=np.array(nodes["kind"], dtype=np.int8),
        missing=np.array(nodes["missing"], dtype=np.int8),
        default_left=np.array(nodes["default_left"], dtype=np.bool_),
        cat_start=np.array(cat_start, dtype=np.int64),
        cat_bits=np.concatenate(cat_words).astype(np.uint32) if cat_words else np.zeros(0, np.uint32),
        left=np.array(nodes["left"], dtype=np.int64),
        right=np.array(nodes["right"], dtype=np.int64),
        slot=np.array(nodes["slot"], dtype=np.int64),
        leaf_value=np.array(leaves["value"], dtype=np.float64),
        leaf_d=leaf_d,
        leaf_feat=leaf_feat,
        feats=np.array([j for f in leaves["feats"] for j in f], dtype=np.int64),
        zs=np.array([z for zz in leaves["zs"] for z in zz], dtype=np.float64),
        leaf_table=leaf_table.astype(np.int64),
        tables=np.zeros(int(sizes.sum()), dtype=np.float64),
        weights=_weights(depth),
        expected=expected,
        table_depth=max_table_depth,
    )
    _fill_tables(forest.leaf_d, forest.leaf_feat, forest.zs, forest.leaf_table, forest.tables, forest.weights)
    return forest


def _add_tree(root: dict[str, Any], nodes: dict[str, list[Any]], cat_words: list[np.ndarray],
              cat_start: list[int], leaves: dict[str, list[Any]]) -> float:
    """Append one tree's nodes and leaves; returns its expected value."""
    node_base, leaf_base = len(nodes["feature"]), len(leaves["value"])
    count_root = float(root["internal_count"])
    n_internal = _count_internal(root)
    for column in nodes.values():
        column.extend([0] * n_internal)
    for column in leaves.values():
        column.extend([None] * (n_internal + 1))
    expected = 0.0
    # (node, path: [(feature, zero fraction)] in slot order as a dict feature -> [slot, z])
    stack: list[tuple[dict[str, Any], dict[int, list[float]]]] = [(root, {})]
    while stack:
        node, path = stack.pop()
        if "leaf_value" in node:
            i = leaf_base + int(node["leaf_index"])
            ordered = sorted(path.items(), key=lambda kv: kv[1][0])
            leaves["value"][i] = float(node["leaf_value"])
            leaves["feats"][i] = [f for f, _ in ordered]
            leaves["zs"][i] = [sz[1] for _, sz in ordered]
            leaves["d"][i] = len(ordered)
            expected += float(node["leaf_value"]) * float(node["leaf_count"]) / count_root
            continue
        k = node_base + int(node["split_index"])
        feature = int(node["split_feature"])
        slot = int(path[feature][0]) if feature in path else len(path)
        nodes["feature"][k] = feature
        nodes["slot"][k] = slot
        nodes["default_left"][k] = bool(node["default_left"])
        nodes["missing"][k] = _MISSING[node["missing_type"]]
        if node["decision_type"] == "==":
            nodes["kind"][k] = _CATEGORICAL
            nodes["threshold"][k] = 0.0
            cats = [int(c) for c in str(node["threshold"]).split("||")]
            words = np.zeros(max(cats) // 32 + 1, dtype=np.uint64)
            for c in cats:
                words[c // 32] |= np.uint64(1) << np.uint64(c % 32)
            cat_words.append(words)
            cat_start.append(cat_start[-1] + len(words))
            nodes["threshold"][k] = float(len(cat_start) - 2)  # the bitset's index
        elif node["decision_type"] == "<=":
            nodes["kind"][k] = _NUMERICAL
            nodes["threshold"][k] = float(node["threshold"])
        else:
            raise ValueError(f"unknown decision type {node['decision_type']!r}")
        count = float(node["internal_count"])
        for side in ("left_child", "right_child"):
            child = node[side]
            ref = (~int(child["leaf_index"])) if "leaf_value" in child else int(child["split_index"])
            nodes["left" if side == "left_child" else "right"][k] = ref
            share = _count(child) / count
            below = {f: list(sz) for f, sz in path.items()}
            if feature in below:
                below[feature][1] *= share
            else:
                below[feature] = [slot, share]
            stack.append((child, below))
    return expected


def _count_internal(node: dict[str, Any]) -> int:
    if "leaf_value" in node:
        return 0
    return 1 + _count_internal(node["left_child"]) + _count_internal(node["right_child"])


def _count(node: dict[str, Any]) -> float:
    return float(node["leaf_count"] if "leaf_value" in node else node["internal_count"])


def _weights(depth: int) -> np.ndarray:
    """w[d, k] = k!(d−1−k)!/d! = 1 / (d · C(d−1, k)), exact integers until the division."""
    w = np.zeros((depth + 1, max(depth, 1)), dtype=np.float64)
    for d in range(1, depth + 1):
        for k in range(d):
            w[d, k] = 1.0 / (d * math.comb(d - 1, k))
    return w


# -- the kernels ------------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def _fill_tables(leaf_d: np.ndarray, leaf_feat: np.ndarray, zs: np.ndarray, leaf_table: np.ndarray,
                 tables: np.ndarray, w: np.ndarray) -> None:
    """For each tabled leaf and each of its features i, W_i over the patterns of the others:
    ``tables[off + i·2^(d−1) + others] = Σ_k w(d, k) [t^k] Π_{j≠i} (z_j + p_j t)``.

    The row's own bit p_i only scales W_i (by 1 − z_i or −z_i), so it is not an index: half the
    table of the row's whole pattern. Each pattern's product over all d features is built once
    (O(d²)) and (z_i + t) divided out of it for every i it has set, from the top coefficient
    down (stable: 0 < z_i <= 1); every (i, others) pair is reached exactly once that way.
    """
    depth = w.shape[0]
    poly = np.empty(depth + 1)
    for leaf in range(leaf_d.shape[0]):
        off = leaf_table[leaf]
        if off < 0:
            continue
        d = leaf_d[leaf]
        f0 = leaf_feat[leaf]
        half = np.int64(1) << (d - 1)
        for pattern in range(np.int64(1) << d):
            poly[0] = 1.0
            for k in range(1, d + 1):
                poly[k] = 0.0
            for j in range(d):
                zj = zs[f0 + j]
                pj = float((pattern >> j) & 1)
                for k in range(j + 1, 0, -1):
                    poly[k] = poly[k] * zj + poly[k - 1] * pj
                poly[0] *= zj
            for i in range(d):
                if (pattern >> i) & 1:
                    zi = zs[f0 + i]
                    q = poly[d]
                    s = w[d, d - 1] * q
                    for k in range(d - 1, 0, -1):
                        q = poly[k] - zi * q
                        s += w[d, k - 1] * q
                    others = ((pattern >> (i + 1)) << i) | (pattern & ((np.int64(1) << i) - 1))
                    tables[off + i * half + others] = s


@njit(cache=True, nogil=True)
def _explain(x: np.ndarray, out: np.ndarray, lo: int, hi: int, tree_node: np.ndarray, tree_leaf: np.ndarray,
             feature: np.ndarray, threshold: np.ndarray, kind: np.ndarray, missing: np.ndarray,
             default_left: np.ndarray, cat_start: np.ndarray, cat_bits: np.ndarray, left: np.ndarray,
             right: np.ndarray, slot: np.ndarray, leaf_value: np.ndarray, leaf_d: np.ndarray,
             leaf_feat: np.ndarray, feats: np.ndarray, zs: np.ndarray, leaf_table: np.ndarray,
             tables: np.ndarray, w: np.ndarray, block: int) -> None:
    """Rows lo..hi of out += their contributions (the bias column is the caller's).

    A block of rows goes through the trees one at a time, node by node with the rows inside:
    one node's test over a column of rows has no branches left but the row's own, which the
    compiler turns into vector code, and the tree's tables stay in cache for the block.
    """
    n_trees = tree_node.shape[0] - 1
    n_features = x.shape[1]
    max_nodes = 1
    for t in range(n_trees):
        max_nodes = max(max_nodes, tree_node[t + 1] - tree_node[t] + 1)
    depth = w.shape[0]
    xt = np.empty((n_features, block))  # the block, feature-major
    acc = np.zeros((n_features, block))  # its contributions, feature-major
    node_pattern = np.empty((max_nodes, block), dtype=np.int64)
    leaf_pattern = np.empty((max_nodes, block), dtype=np.int64)
    poly = np.empty((depth + 1, block))
    bits, q, s0, s1 = np.empty(block), np.empty(block), np.empty(block), np.empty(block)
    for b0 in range(lo, hi, block):
        nb = min(b0 + block, hi) - b0
        for r in range(nb):
            for f in range(n_features):
                v = x[b0 + r, f]
                # LightGBM's dense row reader drops |x| <= 1e-35: such a value is 0.
                xt[f, r] = 0.0 if -ZERO <= v <= ZERO else v
                acc[f, r] = 0.0
        for t in range(n_trees):
            ns, ne = tree_node[t], tree_node[t + 1]
            if ne == ns:
                continue
            ls, le = tree_leaf[t], tree_leaf[t + 1]
            for r in range(nb):
                node_pattern[0, r] = -1
            # Each node's pattern: bit s stays set while the row meets every condition on the feature
            # of slot s so far. A parent is numbered before its children, so one pass in order.
            for k in range(ns, ne):
                f = feature[k]
                bit = np.int64(1) << slot[k]
                here = node_pattern[k - ns]
                cl, cr = left[k], right[k]
                lp = node_pattern[cl] if cl >= 0 else leaf_pattern[~cl]
                rp = node_pattern[cr] if cr >= 0 else leaf_pattern[~cr]
                col = xt[f]
                if kind[k] == 1:
                    c = int(threshold[k])
                    c0, nw = cat_start[c], cat_start[c + 1] - cat_start[c]
                    for r in range(nb):
                        fval = col[r]
                        go = False
                        if not np.isnan(fval):
                            iv = int(fval)  # truncation toward zero, as static_cast<int>
                            if 0 <= iv and (iv >> 5) < nw:
                                go = (cat_bits[c0 + (iv >> 5)] >> (iv & 31)) & 1 == 1
                        lp[r] = here[r] if go else here[r] & ~bit
                        rp[r] = here[r] & ~bit if go else here[r]
                else:
                    thr = threshold[k]
                    m = missing[k]
                    # NaN counts as 0 unless the missing type is NaN; a missing value takes the default side.
                    nan_left = default_left[k] if m == 2 else (default_left[k] if m == 1 else 0.0 <= thr)
                    zero_left = default_left[k] if m == 1 else 0.0 <= thr
                    for r in range(nb):
                        fval = col[r]
                        go = nan_left if np.isnan(fval) else (zero_left if fval == 0.0 else fval <= thr)
                        keep = np.int64(-1) if go else ~bit
                        lp[r] = here[r] & keep
                        rp[r] = here[r] & (~bit ^ keep ^ np.int64(-1))
            for leaf in range(ls, le):
                d = leaf_d[leaf]
                f0 = leaf_feat[leaf]
                mask = (np.int64(1) << d) - 1
                pat = leaf_pattern[leaf - ls]
                off = leaf_table[leaf]
                if off >= 0:
                    # φ_k = v (p_k − z_k) W_k(the others' bits). Feature by feature, so acc is written
                    # along its rows (contiguous).
                    half = np.int64(1) << (d - 1)
                    v = leaf_value[leaf]
                    for k in range(d):
                        row = acc[feats[f0 + k]]
                        zk = zs[f0 + k]
                        met, unmet = v * (1.0 - zk), -v * zk
                        base = off + k * half
                        low = (np.int64(1) << k) - 1
                        for r in range(nb):
                            pattern = pat[r] & mask
                            others = ((pattern >> (k + 1)) << k) | (pattern & low)
                            row[r] += tables[base + others] * (met if (pattern >> k) & 1 else unmet)
                    continue
                # A leaf too deep for a table: _leaf_phi's formula for the whole block, each step a
                # loop over the rows (independent of each other, so vector code).
                v = leaf_value[leaf]
                for r in range(nb):
                    poly[0, r] = 1.0
                for k in range(1, d + 1):
                    for r in range(nb):
                        poly[k, r] = 0.0
                for j in range(d):
                    zj = zs[f0 + j]
                    for r in range(nb):
                        bits[r] = float((pat[r] >> j) & 1)
                    for k in range(j + 1, 0, -1):
                        # (1-D rows: no index arithmetic in the inner loop, which then vectorizes)
                        upper, lower = poly[k], poly[k - 1]
                        for r in range(nb):
                            upper[r] = upper[r] * zj + lower[r] * bits[r]
                    lowest = poly[0]
                    for r in range(nb):
                        lowest[r] *= zj
                for r in range(nb):
                    s0[r] = 0.0
                for k in range(d):
                    wk, coef = w[d, k], poly[k]
                    for r in range(nb):
                        s0[r] += wk * coef[r]
                for i in range(d):
                    zi = zs[f0 + i]
                    top = poly[d]
                    for r in range(nb):
                        q[r] = top[r]
                        s1[r] = w[d, d - 1] * top[r]
                    for k in range(d - 1, 0, -1):
                        wk, coef = w[d, k - 1], poly[k]
                        for r in range(nb):
                            q[r] = coef[r] - zi * q[r]
                            s1[r] += wk * q[r]
                    fi, up = feats[f0 + i], v * (1.0 - zi)
                    for r in range(nb):
                        acc[fi, r] += up * s1[r] if (pat[r] >> i) & 1 else -v * s0[r]
        for r in range(nb):
            for f in range(n_features):
                out[b0 + r, f] += acc[f, r]
