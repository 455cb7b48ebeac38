"""Exact path-dependent TreeSHAP for a LightGBM single-output booster, compiled with numba.

`TreeShap.from_booster(booster)` parses the booster once (``booster.dump_model()``) into a few
flat arrays; `TreeShap.shap_values(M)` then gives, for the float matrix LightGBM sees (numeric
values, categorical codes, NaN = missing), the same SHAP values and bias column as
``booster.predict(M, pred_contrib=True)`` (to float rounding; tested to 1e-9), and
`TreeShap.margin(M)` the raw margin of ``booster.predict(M, raw_score=True)``.

The algorithm is LightGBM's own (``Tree::TreeSHAP`` in src/io/tree.cpp; Lundberg et al.,
"From local explanations to global understanding with explainable AI for trees", 2020,
Algorithm 2), rearranged per leaf instead of recursing:

- a row's decision at every split of every tree is taken once, in one pass over the nodes
  (`_decide`), with LightGBM's decision rules (``NumericalDecision`` / ``CategoricalDecision``
  in include/LightGBM/tree.h: missing types None / Zero / NaN, ``default_left``; NaN and
  negative categories go right; |x| <= 1e-35 reads as 0 as in LightGBM's dense-row reader);
- a leaf's path is known at parse time as its unique features, each with its zero fraction
  (the product of the cover ratios of that feature's splits on the path; cover = the training
  rows counted at each node, as LightGBM uses). Only the one fractions depend on the row: 1 if
  the row follows every split of that feature on the path, else 0. So a leaf of ``d`` unique
  features has ``2**d`` possible contributions;
- for each leaf, the weights of LightGBM's ``ExtendPath`` / ``UnwoundPathSum`` at that leaf
  are computed at parse time for every one of those ``2**d`` patterns (times the leaf value and
  ``one - zero``), within a memory budget (`TABLE_BUDGET`). Leaves beyond it run
  ``ExtendPath`` / ``UnwoundPathSum`` per row;
- the leaves of a small subtree are then tabulated together (`_Groups`): their summed
  contributions keyed by the one fractions of the features on the path to the subtree and the
  row's decisions at the subtree's nodes (at most `GROUP_KEY_BITS` bits), so that a row adds
  one table row per group (a 15-leaf tree has 2-3 groups) instead of one per leaf. This needs
  the tree's decisions as a 64-bit mask: trees of more than 64 internal nodes go leaf by leaf.

The bias column is the sum over trees of ``Tree::ExpectedValue`` (the cover-weighted mean leaf
value; a single-leaf tree's only value), a constant computed at parse time.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, fields
from functools import cached_property
from typing import Any

import lightgbm as lgb
import numpy as np
from numba import njit, prange

__all__ = ["PARALLEL_MIN_ROWS", "TABLE_BUDGET", "TreeShap"]

ZERO_THRESHOLD = float(np.float32(1e-35))
"""LightGBM's ``kZeroThreshold`` (a float 1e-35): |x| <= it is zero."""
_MISSING = {"None": 0, "Zero": 1, "NaN": 2}
# node flags: bit 0 categorical, bit 1 default left, bits 2-3 the missing type (0 None, 1 Zero,
# 2 NaN)
_CATEGORICAL, _DEFAULT_LEFT = 1, 2
TABLE_BUDGET = 4_000_000
"""Most float64 values (32 MB) of precomputed contributions per model, for the leaf tables
(leaves tabulated by increasing path length until it is spent) and again for the group tables
(whole trees grouped while it lasts). The leaf tables of grouped trees are dropped after
parsing: the served model (75 trees of 15 leaves) keeps about 0.18 M values (1.4 MB)."""
TABLE_MAX_FEATURES = 12
"""Longest path (unique features) whose ``2**d · d`` contributions are tabulated."""
PARALLEL_MIN_ROWS = 256
"""Rows (or probes) from which a `TreeShap` built with ``threads > 1`` splits a call over numba
threads."""
BLOCK_ROWS = 8
"""Rows explained side by side when every tree is grouped whole (`_whole_block`)."""
PARALLEL_TURN = threading.RLock()
"""Held by every launch of a parallel kernel, in every `TreeShap` of the process: numba's
workqueue threading layer (its fallback where neither OpenMP nor TBB is installed) aborts the
process on concurrent parallel launches. Re-entrant, so a caller may hold it across several
calls (`serving.api.service.Service.decide_batch` takes it without waiting: a batch arriving
while another holds it runs on one thread instead)."""

# columns of the packed integer arrays
_N_FEATURE, _N_FLAGS, _N_CAT_START, _N_CAT_LEN, _N_LEFT, _N_RIGHT = range(6)
_T_NODE_START, _T_NODE_END, _T_LEAF_START, _T_LEAF_END, _T_GROUP_START, _T_GROUP_END = range(6)
_G_PRE_START, _G_PRE_END, _G_DEC_START, _G_DEC_END, _G_FEAT_START, _G_FEAT_END, _G_TABLE = range(7)
_G_LEAF = 7
_L_ELEM_START, _L_ELEM_END, _L_TABLE = range(3)
_E_FEATURE, _E_SPLIT_START, _E_SPLIT_END = range(3)


@dataclass(frozen=True)
class _Forest:
    """The parsed trees, packed (global indices except where noted).

    - ``trees`` (trees × 4): node start/end, leaf start/end;
    - ``nodes`` (nodes × 6): split feature, flags, categorical bitset start/length in
      ``cat_words``, left/right child (local to the tree: >= 0 a node, < 0 the leaf ``~c``);
      ``thresholds``: numerical thresholds;
    - ``leaves`` (leaves × 3): unique-feature element start/end, table offset (-1: none);
      ``leaf_values``;
    - ``elems`` (elements × 3): feature, split start/end; ``zeros`` (elements × 2): zero
      fraction and its inverse;
    - ``splits`` (splits × 2): node (local to the tree), 1 if the path goes left there;
      ``masks`` (elements × 2, uint64): the same as bit masks over the tree's nodes (bit ``s``
      of ``masks[e, 0]``: node ``s`` is a split of the element; of ``masks[e, 1]``: the path
      goes left there), used when the tree has at most 64 internal nodes;
    - ``tables``: per tabulated leaf, ``2**d`` rows of ``d`` contributions;
    - ``groups`` (groups × 7): prefix element start/end in ``group_masks`` (uint64 mask / want
      of each feature on the path to the group), node start/end in ``group_nodes`` (local
      ids), feature start/end in ``group_features``, table offset in ``group_tables`` (rows of
      as many contributions as the group has features), and (column 7) the offset in
      ``group_leaves`` of the leaf value of each key when the group is the whole tree (its
      decisions are every node's: the key says the leaf), else -1. Trees (columns 4-5) list
      their groups; a tree without groups goes leaf by leaf. A group's nodes are in ascending
      order, so the key of a whole-tree group is the tree's decision mask itself;
    - ``node_features``, ``node_nan``, ``node_zero``, ``cat_nodes``: what `_decide` needs to
      take every node's decision for a row in one pass (`_numeric_left` written as a lookup:
      ``x <= threshold`` but for a missing or zero value, whose decision depends only on the
      node);
    - ``whole`` (trees × 6, int32): for a tree grouped whole, what `_shap_row` reads of it in
      one small row: node start, node count, table offset, feature start and count in
      ``group_features``, offset in ``group_leaves``; node count -1 for every other tree."""

    trees: np.ndarray
    nodes: np.ndarray
    thresholds: np.ndarray
    cat_words: np.ndarray
    leaves: np.ndarray
    leaf_values: np.ndarray
    elems: np.ndarray
    zeros: np.ndarray
    splits: np.ndarray
    masks: np.ndarray
    tables: np.ndarray
    groups: np.ndarray
    group_masks: np.ndarray
    group_nodes: np.ndarray
    group_features: np.ndarray
    group_tables: np.ndarray
    group_leaves: np.ndarray
    factors: np.ndarray  # 4 × (D+1) × (D+1): ExtendPath / UnwoundPathSum factors
    node_features: np.ndarray  # each node's split feature (``nodes[:, 0]``, contiguous)
    node_nan: np.ndarray  # each numerical node's decision (1 left) for NaN
    node_zero: np.ndarray  # ... for |x| <= kZeroThreshold (`_numeric_left`)
    cat_nodes: np.ndarray  # the categorical nodes (global ids)
    whole: np.ndarray  # trees × 6 (int32): a whole-tree group's node start, node count, ...
    max_depth: int  # the most unique features on a path
    bias: float  # Σ trees' expected values

    @cached_property
    def arrays(self) -> tuple[np.ndarray, ...]:
        """The arrays the SHAP kernels read: the array fields, in declaration order, which is
        `_shap_row`'s (one tuple: numba unpacks it at compile time, so the kernels share one
        argument instead of seventeen)."""
        values = (getattr(self, f.name) for f in fields(self))
        return tuple(v for v in values if isinstance(v, np.ndarray))

    @cached_property
    def feature_trees(self) -> tuple[np.ndarray, np.ndarray]:
        """The trees that split on each feature, as (starts, trees): feature ``j``'s trees are
        ``trees[starts[j]:starts[j + 1]]``, ascending (`TreeShap.margin_varied`). A tree that
        does not split on a feature sends every row to the same leaf whatever its value."""
        counts = np.diff(self.trees[:, _T_NODE_START : _T_NODE_END + 1], axis=1)[:, 0]
        tree_of_node = np.repeat(np.arange(len(self.trees), dtype=np.int64), counts)
        pairs = np.unique(np.column_stack([self.nodes[:, _N_FEATURE], tree_of_node]), axis=0)
        width = int(pairs[:, 0].max()) + 1 if len(pairs) else 0
        starts = np.zeros(width + 1, dtype=np.int64)
        np.cumsum(np.bincount(pairs[:, 0], minlength=width), out=starts[1:])
        return starts, np.ascontiguousarray(pairs[:, 1], dtype=np.int64)


class TreeShap:
    """Exact TreeSHAP values and raw margins of a LightGBM single-output booster (module doc).

    Build with `from_booster`. An instance holds only numpy arrays, never changes them, and
    allocates its scratch per call, so several threads may call it at once."""

    def __init__(self, forest: _Forest, num_features: int, *, threads: int = 1) -> None:
        if threads < 1:
            raise ValueError("threads must be >= 1")
        self._f = forest
        self.num_features = num_features
        self.threads = threads

    @classmethod
    def from_booster(
        cls, booster: lgb.Booster, *, threads: int = 1, table_budget: int = TABLE_BUDGET
    ) -> TreeShap:
        """Parse the booster's trees: those `booster.predict` uses by default (up to the best
        iteration when the booster has one). ``threads`` > 1 splits calls of at least
        `PARALLEL_MIN_ROWS` rows over numba threads; ``table_budget`` bounds the precomputed
        leaf contributions (0: none, every leaf computed per row)."""
        dump = booster.dump_model()
        if int(dump.get("num_tree_per_iteration", 1)) != 1 or int(dump.get("num_class", 1)) != 1:
            raise ValueError("TreeShap supports single-output boosters (binary, regression)")
        if dump.get("average_output"):
            raise ValueError("TreeShap does not support averaged (random forest) boosters")
        # the dump writes thresholds through LightGBM's AvoidInf (inf -> 1e300); the model text
        # keeps them exact (a split of NaN vs the rest has threshold inf)
        thresholds = _model_thresholds(booster.model_to_string())
        if len(thresholds) != len(dump["tree_info"]):
            raise ValueError("the booster's model text and dump disagree on the number of trees")
        forest = _parse(dump["tree_info"], thresholds, table_budget)
        return cls(forest, int(dump["max_feature_idx"]) + 1, threads=threads)

    def with_threads(self, threads: int) -> TreeShap:
        """The same engine (the same parsed arrays, shared) splitting calls of at least
        `PARALLEL_MIN_ROWS` rows over ``threads`` numba threads: every row is computed by the
        same code alone, so the values are those of one thread, bit for bit."""
        return (
            self
            if threads == self.threads
            else TreeShap(self._f, self.num_features, threads=threads)
        )

    @property
    def num_trees(self) -> int:
        return len(self._f.trees)

    @property
    def expected_value(self) -> float:
        """The bias column: Σ over trees of the cover-weighted mean leaf value."""
        return self._f.bias

    @property
    def table_size(self) -> int:
        """Precomputed leaf contributions held (float64 values)."""
        return len(self._f.tables)

    def shap_values(self, M: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(φ, φ0) of every row of ``M`` (n × num_features, float; NaN = missing): φ is
        n × num_features, φ0 the bias column (n), and ``φ.sum(1) + φ0`` the raw margin."""
        phi, phi0, _, _ = self.explain(M)
        return phi, phi0

    def explain(
        self, M: np.ndarray, *, leaves: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """(φ, φ0, margin, leaf values) of every row of ``M`` in one pass over the trees: φ and
        φ0 as `shap_values`, the raw margin bit for bit `margin`'s (each row is routed once
        through every tree for both), and with ``leaves`` each row's leaf value in every tree
        (n × `num_trees`, else None), the base that `margin_varied` then need not route again."""
        X = self._check(M)
        f = self._f
        n = X.shape[0]
        phi = np.zeros((n, self.num_features), dtype=np.float64)
        margin = np.empty(n, dtype=np.float64)
        leaf = np.empty((n if leaves else 0, len(f.trees)), dtype=np.float64)
        if self._parallel(X):
            with PARALLEL_TURN:
                _shap_parallel(X, phi, margin, leaf, f.arrays, f.max_depth)
        else:
            _shap_serial(X, phi, margin, leaf, f.arrays, f.max_depth)
        return phi, np.full(n, f.bias), margin, leaf if leaves else None

    def margin(self, M: np.ndarray) -> np.ndarray:
        """The raw margin of every row (``booster.predict(M, raw_score=True)``)."""
        X = self._check(M)
        f = self._f
        out = np.empty(X.shape[0], dtype=np.float64)
        args = (f.trees, f.nodes, f.thresholds, f.cat_words, f.leaves, f.leaf_values)
        if self._parallel(X):
            with PARALLEL_TURN:
                _margin_parallel(X, out, *args)
        else:
            _margin_serial(X, out, *args)
        return out

    def margin_varied(
        self,
        M: np.ndarray,
        rows: np.ndarray,
        cols: np.ndarray,
        values: np.ndarray,
        *,
        leaves: np.ndarray | None = None,
    ) -> np.ndarray:
        """For each probe ``k``: the raw margin of row ``rows[k]`` of ``M`` with its column
        ``cols[k]`` set to ``values[k]`` (the what-if of one feature), bit for bit what `margin`
        gives for those rows built out. Each row's leaf in every tree is found once (probes of
        the same row in a run share it), or read from ``leaves`` (`explain`'s leaf values of
        ``M``) when given; a probe then walks only the trees that split on its column and sums
        every tree's leaf in the trees' order, as `margin` does."""
        X = self._check(M)
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        cols = np.ascontiguousarray(cols, dtype=np.int64)
        values = np.ascontiguousarray(values, dtype=np.float64)
        if not rows.shape == cols.shape == values.shape or rows.ndim != 1:
            raise ValueError("rows, cols and values must be 1-d arrays of one length")
        f = self._f
        if leaves is None:
            known = np.empty((0, len(f.trees)), dtype=np.float64)
        else:
            known = np.ascontiguousarray(leaves, dtype=np.float64)
            if known.shape != (X.shape[0], len(f.trees)):
                raise ValueError(
                    f"leaves must be {X.shape[0]} rows x {len(f.trees)} trees, got {known.shape}"
                )
        starts, tree_ids = f.feature_trees
        if len(starts) < X.shape[1] + 1:  # features after the last one split on: no trees
            starts = np.concatenate([starts, np.full(X.shape[1] + 1 - len(starts), starts[-1])])
        out = np.empty(len(rows), dtype=np.float64)
        args = (starts, tree_ids, f.trees, f.nodes, f.thresholds, f.cat_words, f.leaf_values)
        if self._parallel(rows):
            if not _inside(X, rows, cols):
                raise ValueError(_OUTSIDE)
            with PARALLEL_TURN:
                _margin_varied_parallel(X, rows, cols, values, out, *args, known)
        elif not _margin_varied_rows(X, rows, cols, values, out, 0, len(rows), *args, known):
            raise ValueError(_OUTSIDE)
        return out

    def warm_up(self) -> float:
        """Compile (or load from numba's on-disk cache) every kernel this instance uses, on a
        row of missing values; the seconds it took. Call it at load time so that the first
        request does not pay it."""
        t0 = time.perf_counter()
        rows = PARALLEL_MIN_ROWS if self.threads > 1 else 1
        for n in sorted({1, rows}):
            x = np.full((n, self.num_features), np.nan)
            _, _, _, leaves = self.explain(x, leaves=True)
            self.explain(x)
            self.margin(x)
            probes = np.zeros(n, dtype=np.int64)
            self.margin_varied(x, probes, probes, np.zeros(n))
            self.margin_varied(x, probes, probes, np.zeros(n), leaves=leaves)
        return time.perf_counter() - t0

    def _parallel(self, X: np.ndarray) -> bool:
        """Whether a call over ``X``'s rows (or probes) is split over threads."""
        return self.threads > 1 and X.shape[0] >= PARALLEL_MIN_ROWS

    def _check(self, M: np.ndarray) -> np.ndarray:
        X = np.ascontiguousarray(M, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.num_features:
            raise ValueError(
                f"expected a matrix of {self.num_features} feature columns, got shape {X.shape}"
            )
        return X


_OUTSIDE = "a probe's row or column is outside the matrix"


def _inside(X: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> bool:
    return not len(rows) or (
        rows.min() >= 0 and rows.max() < len(X) and cols.min() >= 0 and cols.max() < X.shape[1]
    )


# -- parsing -----------------------------------------------------------------------------------
def _model_thresholds(text: str) -> list[list[float]]:
    """Each tree's ``threshold=`` values (by split index) from LightGBM's model text."""
    trees: list[list[float]] = []
    for line in text.splitlines():
        if line.startswith("Tree="):
            trees.append([])
        elif line.startswith("threshold=") and trees:
            trees[-1] = [float(v) for v in line.removeprefix("threshold=").split()]
        elif line.startswith("end of trees"):
            break
    return trees


def _parse(
    trees: list[dict[str, Any]], exact_thresholds: list[list[float]], table_budget: int
) -> _Forest:
    """The packed arrays of LightGBM's ``dump_model()["tree_info"]`` (numerical thresholds from
    ``exact_thresholds``, by tree and split index)."""
    tree_rows: list[tuple[int, ...]] = []
    nodes: list[list[int]] = []
    thresholds: list[float] = []
    words: list[int] = []
    leaf_rows: list[list[int]] = []
    leaf_values: list[float] = []
    elems: list[tuple[int, int, int]] = []
    zeros: list[float] = []
    splits: list[tuple[int, int]] = []
    masks: list[tuple[int, int]] = []
    bias = 0.0
    # per tree of at most 64 internal nodes: (tree, root, first leaf, each leaf's unique
    # features in LightGBM's order with the splits of each: (feature, [(split, went left)]))
    groupable: list[tuple[int, dict[str, Any], int, list[list[tuple[int, list[tuple[int, int]]]]]]]
    groupable = []

    for info, tree_thresholds in zip(trees, exact_thresholds, strict=True):
        root = info["tree_structure"]
        node_start, leaf_start = len(nodes), len(leaf_values)
        if "split_index" not in root:  # a single-leaf tree: Tree::ExpectedValue is its value
            leaf_values.append(float(root["leaf_value"]))
            leaf_rows.append([len(elems), len(elems), -1])
            bias += float(root["leaf_value"])
            tree_rows.append((node_start, node_start, leaf_start, leaf_start + 1, 0, 0))
            continue
        n_internal = int(info["num_leaves"]) - 1
        nodes += [[0] * 6 for _ in range(n_internal)]
        thresholds += [0.0] * n_internal
        found: dict[int, tuple[float, float, list[tuple[int, bool, int, float]]]] = {}
        stack: list[tuple[dict[str, Any], list[tuple[int, bool, int, float]]]] = [(root, [])]
        while stack:
            node, path = stack.pop()
            if "split_index" not in node:
                if "leaf_coeff" in node:
                    raise ValueError("TreeShap does not support linear trees (linear_tree)")
                found[int(node["leaf_index"])] = (
                    float(node["leaf_value"]),
                    float(node["leaf_count"]),
                    path,
                )
                continue
            s = int(node["split_index"])
            row = nodes[node_start + s]
            feature = int(node["split_feature"])
            row[_N_FEATURE] = feature
            row[_N_FLAGS] = (_DEFAULT_LEFT if node["default_left"] else 0) | (
                _MISSING[str(node["missing_type"])] << 2
            )
            if node["decision_type"] == "==":
                cats = [int(c) for c in str(node["threshold"]).split("||") if c != ""]
                bits = [0] * (max([c for c in cats if c >= 0], default=-1) // 32 + 1)
                for c in cats:
                    if c >= 0:
                        bits[c // 32] |= 1 << (c % 32)
                row[_N_FLAGS] |= _CATEGORICAL
                row[_N_CAT_START], row[_N_CAT_LEN] = len(words), len(bits)
                words += bits
            elif node["decision_type"] == "<=":
                exact = tree_thresholds[s]
                if not (exact == float(node["threshold"]) or abs(exact) >= 1e300):
                    raise ValueError("the booster's model text and dump disagree on a threshold")
                thresholds[node_start + s] = exact
            else:
                raise ValueError(f"unknown LightGBM decision type {node['decision_type']!r}")
            left, right = node["left_child"], node["right_child"]
            row[_N_LEFT], row[_N_RIGHT] = _child(left), _child(right)
            cover = float(node["internal_count"])
            stack.append((right, [*path, (s, False, feature, _count(right) / cover)]))
            stack.append((left, [*path, (s, True, feature, _count(left) / cover)]))

        total = float(root["internal_count"])
        expected = 0.0
        leaf_elements: list[list[tuple[int, list[tuple[int, int]]]]] = []
        for leaf in range(len(found)):
            value, count, path = found[leaf]
            expected += (count / total) * value
            leaf_values.append(value)
            # unique features in the order LightGBM's recursion leaves them: a feature met again
            # is unwound and extended anew at the end, its zero fraction multiplied on
            order: list[int] = []
            zero: dict[int, float] = {}
            steps: dict[int, list[tuple[int, int]]] = {}
            for s, went_left, feature, ratio in path:
                if feature in zero:
                    order.remove(feature)
                    zero[feature] = ratio * zero[feature]
                else:
                    zero[feature] = ratio
                    steps[feature] = []
                order.append(feature)
                steps[feature].append((s, int(went_left)))
            first = len(elems)
            for feature in order:
                start = len(splits)
                splits += steps[feature]
                elems.append((feature, start, len(splits)))
                zeros.append(zero[feature])
                if n_internal <= 64:
                    mask = sum(1 << s for s, _ in steps[feature])
                    want = sum(1 << s for s, went_left in steps[feature] if went_left)
                    masks.append((mask, want))
                else:
                    masks.append((0, 0))
            leaf_rows.append([first, len(elems), -1])
            leaf_elements.append([(feature, steps[feature]) for feature in order])
        bias += expected
        if n_internal <= 64:
            groupable.append((len(tree_rows), root, leaf_start, leaf_elements))
        tree_rows.append((node_start, len(nodes), leaf_start, len(leaf_values), 0, 0))

    leaves = np.asarray(leaf_rows, dtype=np.int64).reshape(-1, 3)
    depth = leaves[:, _L_ELEM_END] - leaves[:, _L_ELEM_START]
    max_depth = int(depth.max(initial=0))
    factors = _factors(max_depth)
    zero_arr = np.asarray(zeros, dtype=np.float64).reshape(-1)
    with np.errstate(divide="ignore"):
        zero_pair = np.stack([zero_arr, 1.0 / zero_arr], axis=1)
    values = np.asarray(leaf_values, dtype=np.float64)

    # tabulate leaves by increasing path length within the budget
    size = np.where(depth > 0, (2.0**depth) * depth, 0.0)
    offset = 0
    for leaf in np.argsort(depth, kind="stable"):
        d = int(depth[leaf])
        if d == 0 or d > TABLE_MAX_FEATURES or offset + size[leaf] > table_budget:
            continue
        leaves[leaf, _L_TABLE] = offset
        offset += int(size[leaf])
    tables = np.zeros(offset, dtype=np.float64)
    _fill_tables(tables, leaves, values, zero_pair, factors)
    tree_arr = np.asarray(tree_rows, dtype=np.int64).reshape(-1, 6)
    groups = _Groups()
    for t, root, leaf_start, leaf_elements in groupable:
        groups.add_tree(
            t, root, leaf_start, leaf_elements, leaves, tables, tree_arr, table_budget, values
        )
    # the leaf tables of grouped trees are summed into their groups: keep only the others'
    kept: list[np.ndarray] = []
    offset = 0
    for t in range(len(tree_arr)):
        grouped = tree_arr[t, _T_GROUP_END] > tree_arr[t, _T_GROUP_START]
        for leaf in range(tree_arr[t, _T_LEAF_START], tree_arr[t, _T_LEAF_END]):
            off = int(leaves[leaf, _L_TABLE])
            if off < 0:
                continue
            if grouped:
                leaves[leaf, _L_TABLE] = -1
                continue
            n = int(size[leaf])
            kept.append(tables[off : off + n])
            leaves[leaf, _L_TABLE] = offset
            offset += n
    tables = np.concatenate(kept) if kept else np.zeros(0, dtype=np.float64)

    node_arr = np.asarray(nodes, dtype=np.int64).reshape(-1, 6)
    threshold_arr = np.asarray(thresholds, dtype=np.float64)
    flags = node_arr[:, _N_FLAGS]
    default_left = (flags & _DEFAULT_LEFT) != 0
    missing = flags >> 2
    zero_left = threshold_arr >= 0.0  # 0.0 <= threshold
    group_arr = np.asarray(groups.rows, dtype=np.int64).reshape(-1, 8)
    return _Forest(
        trees=tree_arr,
        nodes=node_arr,
        thresholds=threshold_arr,
        cat_words=np.asarray(words, dtype=np.uint32),
        leaves=leaves,
        leaf_values=values,
        elems=np.asarray(elems, dtype=np.int64).reshape(-1, 3),
        zeros=zero_pair.reshape(-1, 2),
        splits=np.asarray(splits, dtype=np.int64).reshape(-1, 2),
        masks=np.asarray(masks, dtype=np.uint64).reshape(-1, 2),
        tables=tables,
        groups=group_arr,
        group_masks=np.asarray(groups.masks, dtype=np.uint64).reshape(-1, 2),
        group_nodes=np.asarray(groups.nodes, dtype=np.int64),
        group_features=np.asarray(groups.features, dtype=np.int32),
        group_tables=(
            np.concatenate(groups.tables).ravel() if groups.tables else np.zeros(0, np.float64)
        ),
        group_leaves=(np.concatenate(groups.leaves) if groups.leaves else np.zeros(0, np.float64)),
        factors=factors,
        node_features=node_arr[:, _N_FEATURE].astype(np.int32),
        # NaN: the default side for the missing types NaN and Zero (NaN reads as 0, a zero),
        # else read as 0; a zero: the default side for Zero, else 0 <= threshold
        node_nan=np.where(missing >= 1, default_left, zero_left).astype(np.uint8),
        node_zero=np.where(missing == 1, default_left, zero_left).astype(np.uint8),
        cat_nodes=np.flatnonzero(flags & _CATEGORICAL).astype(np.int64),
        whole=_whole(tree_arr, group_arr),
        max_depth=max_depth,
        bias=bias,
    )


def _whole(trees: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """`_Forest.whole`: the trees grouped whole (one group whose key says the leaf), as
    `_shap_row` reads them. The offsets are within `TABLE_BUDGET`: int32 holds them."""
    out = np.full((len(trees), 6), -1, dtype=np.int32)
    g0 = trees[:, _T_GROUP_START]
    one = trees[:, _T_GROUP_END] == g0 + 1
    one[one] = groups[g0[one], _G_LEAF] >= 0
    g = g0[one]
    out[one, 0] = trees[one, _T_NODE_START]
    out[one, 1] = trees[one, _T_NODE_END] - trees[one, _T_NODE_START]
    out[one, 2] = groups[g, _G_TABLE]
    out[one, 3] = groups[g, _G_FEAT_START]
    out[one, 4] = groups[g, _G_FEAT_END] - groups[g, _G_FEAT_START]
    out[one, 5] = groups[g, _G_LEAF]
    return out


GROUP_KEY_BITS = 9
"""Most one-fraction and decision bits of a leaf group's table (``2**bits`` rows)."""


class _Groups:
    """Leaf groups: a subtree's leaves whose summed contributions are tabulated together, keyed
    by the row's one fractions of the features on the path to the subtree (``p`` bits) and the
    decisions at the subtree's ``m`` internal nodes (``p + m <= GROUP_KEY_BITS``). A row then
    adds one table row per group instead of one per leaf. The tables are sums of the leaves'
    own tables (`_fill_tables`), so the values are the same to float rounding."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, ...]] = []
        self.masks: list[tuple[int, int]] = []
        self.nodes: list[int] = []
        self.features: list[int] = []
        self.tables: list[np.ndarray] = []
        self.leaves: list[np.ndarray] = []  # leaf value by key of the whole-tree groups
        self.size = 0
        self.leaf_size = 0

    def add_tree(
        self,
        t: int,
        root: dict[str, Any],
        leaf_start: int,
        leaf_elements: list[list[tuple[int, list[tuple[int, int]]]]],
        leaves: np.ndarray,
        tables: np.ndarray,
        trees: np.ndarray,
        budget: int,
        leaf_values: np.ndarray,
    ) -> None:
        """Group one tree's leaves (when they all have tables and the budget allows)."""
        if any(leaves[leaf_start + i, _L_TABLE] < 0 for i in range(len(leaf_elements))):
            return
        made: list[tuple[list[tuple[int, int, int]], list[int], list[int], np.ndarray]] = []

        def visit(node: dict[str, Any], prefix: list[tuple[int, int, int]]) -> None:
            inner, below = _subtree(node)
            features = list(dict.fromkeys(f for _, _, f in prefix))
            if inner and len(features) + len(inner) > GROUP_KEY_BITS:
                s, f = int(node["split_index"]), int(node["split_feature"])
                visit(node["left_child"], [*prefix, (s, 1, f)])
                visit(node["right_child"], [*prefix, (s, 0, f)])
                return
            made.append(
                self._table(prefix, inner, below, leaf_start, leaf_elements, leaves, tables)
            )

        visit(root, [])
        size = sum(table.size for *_, table in made)
        if self.size + size > budget:
            return
        offset = self.size
        self.size += size
        first = len(self.rows)
        for prefix_masks, inner, features, table in made:
            m0, n0, f0 = len(self.masks), len(self.nodes), len(self.features)
            self.masks += [(mask, want) for _, mask, want in prefix_masks]
            self.nodes += inner
            self.features += features
            leaf_at = -1
            if not prefix_masks and len(made) == 1:  # the whole tree: the leaf of each key
                leaf_at = self.leaf_size
                by_key = _leaf_by_key(root, inner, leaf_values[leaf_start:])
                self.leaves.append(by_key)
                self.leaf_size += len(by_key)
            row = (m0, len(self.masks), n0, len(self.nodes), f0, len(self.features), offset)
            self.rows.append((*row, leaf_at))
            offset += table.size
            self.tables.append(table)
        trees[t, _T_GROUP_START], trees[t, _T_GROUP_END] = first, len(self.rows)

    @staticmethod
    def _table(
        prefix: list[tuple[int, int, int]],
        inner: list[int],
        below: list[int],
        leaf_start: int,
        leaf_elements: list[list[tuple[int, list[tuple[int, int]]]]],
        leaves: np.ndarray,
        tables: np.ndarray,
    ) -> tuple[list[tuple[int, int, int]], list[int], list[int], np.ndarray]:
        """(prefix features with their split masks, inner nodes, the group's features, table)."""
        prefix_features = list(dict.fromkeys(f for _, _, f in prefix))
        prefix_masks = [
            (
                f,
                sum(1 << s for s, _, g in prefix if g == f),
                sum(1 << s for s, went_left, g in prefix if g == f and went_left),
            )
            for f in prefix_features
        ]
        p, m = len(prefix_features), len(inner)
        bit_of = {f: k for k, f in enumerate(prefix_features)}
        node_bit = {s: p + j for j, s in enumerate(inner)}
        features = list(prefix_features)
        for leaf in below:
            for f, _ in leaf_elements[leaf]:
                if f not in features:
                    features.append(f)
        column = {f: c for c, f in enumerate(features)}
        keys = np.arange(1 << (p + m), dtype=np.int64)
        table = np.zeros((len(keys), len(features)))
        for leaf in below:
            elements = leaf_elements[leaf]
            d = len(elements)
            pattern = np.zeros(len(keys), dtype=np.int64)
            for k, (f, steps) in enumerate(elements):
                one = np.ones(len(keys), dtype=np.int64)
                if f in bit_of:
                    one &= (keys >> bit_of[f]) & 1
                for s, went_left in steps:
                    if s in node_bit:  # a split inside the subtree (else in the prefix)
                        one &= (((keys >> node_bit[s]) & 1) == went_left).astype(np.int64)
                pattern |= one << k
            off = int(leaves[leaf_start + leaf, _L_TABLE])
            own = tables[off : off + (1 << d) * d].reshape(1 << d, d)[pattern]
            for k, (f, _) in enumerate(elements):
                table[:, column[f]] += own[:, k]
        return prefix_masks, inner, features, table.ravel()


def _leaf_by_key(root: dict[str, Any], inner: list[int], values: np.ndarray) -> np.ndarray:
    """The value of the leaf each key of a whole-tree group reaches (bit ``j`` of the key: the
    row goes left at node ``inner[j]``), as `_leaf_value` walks to it."""
    bit = {s: j for j, s in enumerate(inner)}
    out = np.empty(1 << len(inner), dtype=np.float64)
    for key in range(len(out)):
        node = root
        while "split_index" in node:
            left = (key >> bit[int(node["split_index"])]) & 1
            node = node["left_child"] if left else node["right_child"]
        out[key] = values[int(node["leaf_index"])]
    return out


def _subtree(node: dict[str, Any]) -> tuple[list[int], list[int]]:
    """(internal split indices, ascending; leaf indices) of the subtree at ``node``."""
    inner: list[int] = []
    below: list[int] = []
    stack = [node]
    while stack:
        n = stack.pop()
        if "split_index" in n:
            inner.append(int(n["split_index"]))
            stack += [n["right_child"], n["left_child"]]
        else:
            below.append(int(n["leaf_index"]))
    return sorted(inner), below


def _count(node: dict[str, Any]) -> float:
    return float(node["internal_count"] if "split_index" in node else node["leaf_count"])


def _child(node: dict[str, Any]) -> int:
    return int(node["split_index"]) if "split_index" in node else ~int(node["leaf_index"])


def _factors(max_depth: int) -> np.ndarray:
    """ExtendPath / UnwoundPathSum factors by path length u (rows) and position i (columns):
    [0] (i+1)/(u+1), [1] (u-i)/(u+1), [2] (u+1)/(i+1), [3] (u+1)/(u-i)."""
    u = np.arange(max_depth + 2, dtype=np.float64)[:, None]
    i = np.arange(max_depth + 2, dtype=np.float64)[None, :]
    with np.errstate(divide="ignore"):
        return np.ascontiguousarray(
            np.stack([(i + 1) / (u + 1), (u - i) / (u + 1), (u + 1) / (i + 1), (u + 1) / (u - i)])
        )


# -- kernels -----------------------------------------------------------------------------------
@njit(cache=True)
def _numeric_left(fval: float, flags: int, threshold: float) -> bool:
    """LightGBM's ``NumericalDecision`` (true = left), after its dense-row reader that turns
    |x| <= kZeroThreshold into 0."""
    missing = flags >> 2
    if math.isnan(fval):
        if missing == 2:
            return (flags & _DEFAULT_LEFT) != 0
        fval = 0.0
    if -ZERO_THRESHOLD <= fval <= ZERO_THRESHOLD:
        if missing == 1:
            return (flags & _DEFAULT_LEFT) != 0
        fval = 0.0
    return fval <= threshold


@njit(cache=True)
def _category_left(fval: float, cat_words: np.ndarray, start: int, length: int) -> bool:
    """LightGBM's ``CategoricalDecision`` (true = left): NaN and negative codes go right; the
    code is the value truncated to int (x86 turns values beyond int32 into INT_MIN: right)."""
    if math.isnan(fval) or fval <= -1.0 or fval >= 2147483648.0:
        return False
    code = int(fval)
    word = code >> 5
    if word >= length:
        return False
    return ((cat_words[start + word] >> (code & 31)) & 1) != 0


@njit(cache=True)
def _goes_left(x, g, nodes, thresholds, cat_words):
    """Does row ``x`` go left at node ``g`` (global id)?"""
    fval = x[nodes[g, _N_FEATURE]]
    flags = nodes[g, _N_FLAGS]
    if flags & _CATEGORICAL:
        return _category_left(fval, cat_words, nodes[g, _N_CAT_START], nodes[g, _N_CAT_LEN])
    return _numeric_left(fval, flags, thresholds[g])


@njit(cache=True)
def _fill_tables(tables, leaves, leaf_values, zeros, factors):
    """Every tabulated leaf's contribution of each feature for every one-fraction pattern."""
    pw = np.zeros(factors.shape[1] + 1)
    ones = np.zeros(factors.shape[1] + 1)
    w = np.zeros(factors.shape[1] + 1)
    for leaf in range(leaves.shape[0]):
        off = leaves[leaf, _L_TABLE]
        if off < 0:
            continue
        e0 = leaves[leaf, _L_ELEM_START]
        d = leaves[leaf, _L_ELEM_END] - e0
        v = leaf_values[leaf]
        for p in range(1 << d):
            for k in range(d):
                ones[k] = float((p >> k) & 1)
            _path_weights(e0, d, ones, zeros, factors, pw, w)
            for k in range(d):
                tables[off + p * d + k] = w[k] * (ones[k] - zeros[e0 + k, 0]) * v


@njit(cache=True)
def _path_weights(e0, d, ones, zeros, factors, pw, w):
    """LightGBM's ``ExtendPath`` over the dummy root element and the leaf's ``d`` unique
    features (one fractions ``ones``), then each feature's ``UnwoundPathSum`` into ``w``."""
    pw[0] = 1.0
    for k in range(d):
        o = ones[k]
        z = zeros[e0 + k, 0]
        u = k + 1
        pw[u] = 0.0
        for i in range(u - 1, -1, -1):
            pw[i + 1] += o * pw[i] * factors[0, u, i]
            pw[i] = z * pw[i] * factors[1, u, i]
    for k in range(d):
        total = 0.0
        if ones[k] != 0.0:
            z = zeros[e0 + k, 0]
            nxt = pw[d]
            for i in range(d - 1, -1, -1):
                tmp = nxt * factors[2, d, i]
                total += tmp
                nxt = pw[i] - tmp * z * factors[1, d, i]
        else:
            iz = zeros[e0 + k, 1]
            for i in range(d - 1, -1, -1):
                total += pw[i] * iz * factors[3, d, i]
        w[k] = total


@njit(cache=True)
def _decide(x, dec, node_features, thresholds, node_nan, node_zero, cat_nodes, nodes, cat_words):
    """Every node's decision (1 = left) for row ``x`` into ``dec`` (by global node id): the
    decisions `_goes_left` takes, numerical nodes in one pass without branches (a missing or
    zero value's decision is the node's ``node_nan`` / ``node_zero``), then the categorical
    nodes."""
    for g in range(node_features.shape[0]):
        v = x[node_features[g]]
        d = np.uint8(v <= thresholds[g])
        d = node_nan[g] if v != v else d
        d = node_zero[g] if abs(v) <= ZERO_THRESHOLD else d
        dec[g] = d
    for g in cat_nodes:
        dec[g] = _category_left(
            x[nodes[g, _N_FEATURE]], cat_words, nodes[g, _N_CAT_START], nodes[g, _N_CAT_LEN]
        )


@njit(cache=True)
def _shap_row(x, phi, forest, dec, pw, ones, w, leafv):
    """Add one row's SHAP values (every tree) to ``phi`` and return its raw margin; ``forest``
    is `_Forest.arrays()`; ``dec`` (one per node), ``pw``, ``ones``, ``w`` are scratch;
    ``leafv`` (one per tree) receives the value of the leaf the row reaches in each tree. The
    margin is those values summed from 0.0 in tree order, the additions of `_margin_row` in
    its order: the same number bit for bit (the leaf is found from the decisions `_decide`
    took, which are `_leaf_value`'s)."""
    (
        trees,
        nodes,
        thresholds,
        cat_words,
        leaves,
        leaf_values,
        elems,
        zeros,
        splits,
        masks,
        tables,
        groups,
        group_masks,
        group_nodes,
        group_features,
        group_tables,
        group_leaves,
        factors,
        node_features,
        node_nan,
        node_zero,
        cat_nodes,
        whole,
    ) = forest
    _decide(x, dec, node_features, thresholds, node_nan, node_zero, cat_nodes, nodes, cat_words)
    total = 0.0
    for t in range(trees.shape[0]):
        m = whole[t, 1]
        if m >= 0:
            # the whole tree as one group: its nodes ascending, every one a key bit, so the
            # key is the decision mask (`_Groups.add_tree`)
            n0 = whole[t, 0]
            key = 0
            for s in range(m):
                key |= int(dec[n0 + s]) << s
            f0 = whole[t, 3]
            u = whole[t, 4]
            base = whole[t, 2] + key * u
            for c in range(u):
                phi[group_features[f0 + c]] += group_tables[base + c]
            value = group_leaves[whole[t, 5] + key]
            leafv[t] = value
            total += value
            continue
        n0 = trees[t, _T_NODE_START]
        m = trees[t, _T_NODE_END] - n0
        bits = np.uint64(0)  # the decisions as a mask (the first 64 nodes)
        for s in range(min(m, 64)):
            bits |= np.uint64(dec[n0 + s]) << np.uint64(s)
        g0 = trees[t, _T_GROUP_START]
        g1 = trees[t, _T_GROUP_END]
        node = 0 if m > 0 else -1  # -1: a single-leaf tree
        while node >= 0:  # the child by index (right, left), not by a branch
            node = nodes[n0 + node, _N_RIGHT - dec[n0 + node]]
        value = leaf_values[trees[t, _T_LEAF_START] + ~node]
        leafv[t] = value
        total += value
        if g1 > g0:
            for g in range(g0, g1):
                # the table row: the one fractions of the features on the path to the group,
                # then the decisions at the group's nodes
                key = 0
                k = 0
                for q in range(groups[g, _G_PRE_START], groups[g, _G_PRE_END]):
                    off_path = (bits ^ group_masks[q, 1]) & group_masks[q, 0]
                    key |= int(off_path == np.uint64(0)) << k
                    k += 1
                for q in range(groups[g, _G_DEC_START], groups[g, _G_DEC_END]):
                    key |= int((bits >> np.uint64(group_nodes[q])) & np.uint64(1)) << k
                    k += 1
                f0 = groups[g, _G_FEAT_START]
                u = groups[g, _G_FEAT_END] - f0
                base = groups[g, _G_TABLE] + key * u
                for c in range(u):
                    phi[group_features[f0 + c]] += group_tables[base + c]
            continue
        use_bits = m <= 64
        for leaf in range(trees[t, _T_LEAF_START], trees[t, _T_LEAF_END]):
            e0 = leaves[leaf, _L_ELEM_START]
            d = leaves[leaf, _L_ELEM_END] - e0
            if d == 0:
                continue
            # the one fractions: does the row follow every split of the feature on the path?
            pattern = 0
            if use_bits:
                for k in range(d):
                    off_path = (bits ^ masks[e0 + k, 1]) & masks[e0 + k, 0]
                    pattern |= int(off_path == np.uint64(0)) << k
            else:
                for k in range(d):
                    e = e0 + k
                    o = 1
                    for q in range(elems[e, _E_SPLIT_START], elems[e, _E_SPLIT_END]):
                        if dec[n0 + splits[q, 0]] != splits[q, 1]:
                            o = 0
                            break
                    pattern |= o << k
            off = leaves[leaf, _L_TABLE]
            if off >= 0:
                base = off + pattern * d
                for k in range(d):
                    phi[elems[e0 + k, _E_FEATURE]] += tables[base + k]
            else:
                for k in range(d):
                    ones[k] = float((pattern >> k) & 1)
                _path_weights(e0, d, ones, zeros, factors, pw, w)
                v = leaf_values[leaf]
                for k in range(d):
                    phi[elems[e0 + k, _E_FEATURE]] += w[k] * (ones[k] - zeros[e0 + k, 0]) * v
    return total


@njit(cache=True)
def _shap_rows(X, phi, margin, leaves, lo, hi, forest, max_depth):
    """`_shap_row` over rows ``lo`` to ``hi`` of ``X``, with one set of scratch arrays: the
    margins into ``margin``, each tree's leaf value into ``leaves`` (rows x trees) when it has
    rows (else into scratch). A forest of trees all grouped whole goes `BLOCK_ROWS` rows at a
    time (`_whole_block`: the same values)."""
    dec = np.zeros(forest[1].shape[0], dtype=np.uint8)
    whole = forest[-1]
    every = whole.shape[0] > 0
    for t in range(whole.shape[0]):
        every = every and whole[t, 1] >= 0
    if every:
        decs = np.zeros((BLOCK_ROWS, dec.shape[0]), dtype=np.uint8)
        keys = np.zeros((BLOCK_ROWS, whole.shape[0]), dtype=np.int64)
        for at in range(lo, hi, BLOCK_ROWS):
            _whole_block(X, phi, margin, leaves, at, min(at + BLOCK_ROWS, hi), forest, decs, keys)
        return
    pw = np.zeros(max_depth + 2)
    ones = np.zeros(max_depth + 1)
    w = np.zeros(max_depth + 1)
    keep = leaves.shape[0] > 0
    scratch = np.empty(forest[0].shape[0])
    for r in range(lo, hi):
        leafv = leaves[r] if keep else scratch
        margin[r] = _shap_row(X[r], phi[r], forest, dec, pw, ones, w, leafv)


@njit(cache=True)
def _whole_block(X, phi, margin, leaves, lo, hi, forest, decs, keys):
    """`_shap_row` of rows ``lo`` to ``hi`` (at most `BLOCK_ROWS`) of a forest whose trees are
    all grouped whole: each row's decisions and every tree's key first, then tree by tree each
    row in turn (a tree's table read once for the block; the rows' sums, independent,
    overlap). Each row's values and margin get their additions in tree order from 0.0, as
    `_shap_row` gives them: the same numbers bit for bit."""
    (
        _trees,
        nodes,
        thresholds,
        cat_words,
        _leaves,
        _leaf_values,
        _elems,
        _zeros,
        _splits,
        _masks,
        _tables,
        _groups,
        _group_masks,
        _group_nodes,
        group_features,
        group_tables,
        group_leaves,
        _factors,
        node_features,
        node_nan,
        node_zero,
        cat_nodes,
        whole,
    ) = forest
    keep = leaves.shape[0] > 0
    for r in range(lo, hi):
        dec = decs[r - lo]
        _decide(X[r], dec, node_features, thresholds, node_nan, node_zero, cat_nodes, nodes,
                cat_words)  # fmt: skip
        key = keys[r - lo]
        for t in range(whole.shape[0]):  # the key is the decision mask (`_shap_row`)
            n0 = whole[t, 0]
            k = 0
            for s in range(whole[t, 1]):
                k |= int(dec[n0 + s]) << s
            key[t] = k
        margin[r] = 0.0
    for t in range(whole.shape[0]):
        f0 = whole[t, 3]
        u = whole[t, 4]
        for r in range(lo, hi):
            k = keys[r - lo, t]
            base = whole[t, 2] + k * u
            for c in range(u):
                phi[r, group_features[f0 + c]] += group_tables[base + c]
            value = group_leaves[whole[t, 5] + k]
            if keep:
                leaves[r, t] = value
            margin[r] += value


@njit(cache=True, nogil=True)  # Python threads may run beside it
def _shap_serial(X, phi, margin, leaves, forest, max_depth):
    _shap_rows(X, phi, margin, leaves, 0, X.shape[0], forest, max_depth)


@njit(cache=True, parallel=True)
def _shap_parallel(X, phi, margin, leaves, forest, max_depth):
    n = X.shape[0]
    chunks = min(n, 64)
    for c in prange(chunks):
        lo, hi = c * n // chunks, (c + 1) * n // chunks
        _shap_rows(X, phi, margin, leaves, lo, hi, forest, max_depth)


@njit(cache=True)
def _margin_row(x, trees, nodes, thresholds, cat_words, leaves, leaf_values):
    total = 0.0
    for t in range(trees.shape[0]):
        total += _leaf_value(x, t, trees, nodes, thresholds, cat_words, leaf_values)
    return total


@njit(cache=True, nogil=True)  # Python threads may run beside it
def _margin_serial(X, out, trees, nodes, thresholds, cat_words, leaves, leaf_values):
    for r in range(X.shape[0]):
        out[r] = _margin_row(X[r], trees, nodes, thresholds, cat_words, leaves, leaf_values)


@njit(cache=True, parallel=True)
def _margin_parallel(X, out, trees, nodes, thresholds, cat_words, leaves, leaf_values):
    for r in prange(X.shape[0]):
        out[r] = _margin_row(X[r], trees, nodes, thresholds, cat_words, leaves, leaf_values)


@njit(cache=True)
def _leaf_value(x, t, trees, nodes, thresholds, cat_words, leaf_values):
    """The value of the leaf row ``x`` reaches in tree ``t`` (`_margin_row` sums them)."""
    n0 = trees[t, _T_NODE_START]
    node = 0
    if trees[t, _T_NODE_END] == n0:  # a single-leaf tree
        node = -1
    while node >= 0:  # the child by index (right, left), not by a branch
        g = n0 + node
        node = nodes[g, _N_RIGHT - int(_goes_left(x, g, nodes, thresholds, cat_words))]
    return leaf_values[trees[t, _T_LEAF_START] + ~node]


@njit(cache=True, nogil=True)  # Python threads may run beside it
def _margin_varied_rows(
    X, rows, cols, values, out, lo, hi, starts, tree_ids, trees, nodes, thresholds, cat_words,
    leaf_values, known,
):  # fmt: skip
    """`TreeShap.margin_varied` for probes ``lo`` to ``hi``: the base row's leaves once per run
    of probes of one row (read from ``known``, rows x trees, when it has rows: `TreeShap.explain`'s
    leaves of ``X``), then per probe only the trees of its column walked again, and the leaves
    summed from 0.0 in tree order (`_margin_row`'s additions, in its order). Up to 4 probes in
    a row of one row and column (a value and its neighbours) are summed side by side, each
    its own sum in tree order: bit for bit the sum alone. False (and nothing computed) when a
    probe's row or column is outside ``X``."""
    for k in range(lo, hi):
        if not (0 <= rows[k] < X.shape[0] and 0 <= cols[k] < X.shape[1]):
            return False
    n_trees = trees.shape[0]
    base = np.empty(n_trees)
    x = np.empty(X.shape[1])
    given = known.shape[0] > 0
    walked = np.zeros((n_trees, 4))  # the probes' leaves in the trees of their column
    row = -1
    k = lo
    while k < hi:
        if rows[k] != row:
            row = rows[k]
            x[:] = X[row]
            if not given:
                for t in range(n_trees):
                    base[t] = _leaf_value(x, t, trees, nodes, thresholds, cat_words, leaf_values)
        src = known[row] if given else base
        c = cols[k]
        end = k + 1
        while end < hi and end - k < 4 and rows[end] == row and cols[end] == c:
            end += 1
        q0, q1 = starts[c], starts[c + 1]
        kept = x[c]
        for j in range(end - k):
            x[c] = values[k + j]
            for q in range(q0, q1):
                t = tree_ids[q]
                walked[q - q0, j] = _leaf_value(
                    x, t, trees, nodes, thresholds, cat_words, leaf_values
                )
        x[c] = kept
        # every tree's leaf in tree order: the base row's, but for the trees of the column
        # (ascending), walked with each probe's value
        s0 = s1 = s2 = s3 = 0.0
        t = 0
        for q in range(q0, q1 + 1):
            stop = tree_ids[q] if q < q1 else n_trees
            for u in range(t, stop):
                v = src[u]
                s0 += v
                s1 += v
                s2 += v
                s3 += v
            if q < q1:
                i = q - q0
                s0 += walked[i, 0]
                s1 += walked[i, 1]
                s2 += walked[i, 2]
                s3 += walked[i, 3]
                t = stop + 1
        out[k] = s0
        if end - k > 1:
            out[k + 1] = s1
        if end - k > 2:
            out[k + 2] = s2
        if end - k > 3:
            out[k + 3] = s3
        k = end
    return True


@njit(cache=True, parallel=True)
def _margin_varied_parallel(
    X, rows, cols, values, out, starts, tree_ids, trees, nodes, thresholds, cat_words, leaf_values,
    known,
):  # fmt: skip
    n = rows.shape[0]
    chunks = min(n, 64)
    for c in prange(chunks):
        _margin_varied_rows(
            X, rows, cols, values, out, c * n // chunks, (c + 1) * n // chunks, starts, tree_ids,
            trees, nodes, thresholds, cat_words, leaf_values, known,
        )  # fmt: skip
