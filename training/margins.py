"""The raw margins of many rows from a LightGBM booster, bit for bit ``booster.predict(X,
raw_score=True)``, several times faster: every margin `training.train.grow` reads (the model's
of every matured row, the calibration and cross-fitting boosters' of their held-out rows).

LightGBM walks every tree for every row, from the root down, one unpredictable branch per
level (about 70 ns per row and tree on the 20,000-SME bench model: 523 trees of 23 leaves).
`Margins` uses the bit-vector scheme of QuickScorer (Lucchese et al., "QuickScorer: a fast
algorithm to rank documents with additive ensembles of regression trees", SIGIR 2015) instead:

- a tree's leaves are numbered left to right; each internal node holds a mask of its tree's
  leaves with the leaves of its left subtree cleared. A row's leaf in a tree is the leftmost
  leaf left set after the masks of every node whose test sends the row right are and-ed
  together (the leftmost leaf no right turn rules out is the one the row reaches);
- a feature's numeric nodes of every tree are sorted by threshold, so the nodes that send a
  row right on that feature (LightGBM's rule: right when ``x > threshold``) are a prefix of the
  list, walked until the first threshold at or above ``x``; missing values and zeros follow
  LightGBM's ``NumericalDecision`` (missing types None / Zero / NaN and ``default_left``; its
  dense-row reader turns |x| <= 1e-35 into 0), fixed per node at parse time and listed apart
  (a NaN or zero value walks its own list); categorical nodes are tested one by one with
  LightGBM's ``CategoricalDecision`` (NaN and negative codes go right);
- the leaves' values are summed from 0.0 in tree order, as LightGBM's ``PredictRaw`` adds
  them: the same additions in the same order, so the same double, bit for bit (tested).

On that model's 888,117 matured rows: 33 s of CPU in ``booster.predict``, 11 s here, every
margin equal bit for bit (one thread each, a busy 2-core machine).

A tree of more than 64 leaves does not fit a mask: `Margins` refuses such a booster (ValueError),
and `margins` then asks ``booster.predict``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import njit

from training.treeshap import ZERO_THRESHOLD  # LightGBM's kZeroThreshold: one declaration

MAX_LEAVES = 64
"""Most leaves of a tree whose leaves fit one 64-bit mask."""
_CATEGORICAL, _DEFAULT_LEFT = 1, 2
_MISSING_NONE, _MISSING_ZERO, _MISSING_NAN = 0, 1, 2
_DEBRUIJN = 0x03F79D71B4CB0A89
"""De Bruijn constant: (low bit · it) >> 58 is distinct for each of the 64 single-bit words."""


@dataclass(frozen=True)
class _Tree:
    """One tree of a model text, as LightGBM writes it."""

    num_leaves: int
    split_feature: np.ndarray
    threshold: np.ndarray
    decision_type: np.ndarray
    left: np.ndarray
    right: np.ndarray
    leaf_value: np.ndarray
    cat_boundaries: np.ndarray
    cat_threshold: np.ndarray


def _trees(text: str) -> tuple[int, list[_Tree]]:
    """(number of features, trees) of a LightGBM model text. Raises ValueError for what
    `Margins` does not read: several outputs per iteration, linear trees, averaged output."""
    head, _, body = text.partition("\nTree=0\n")
    header = dict(line.split("=", 1) for line in head.splitlines() if "=" in line)
    if int(header.get("num_tree_per_iteration", "1")) != 1:
        raise ValueError("Margins reads single-output boosters (binary, regression)")
    if "average_output" in head.splitlines():
        raise ValueError("Margins does not read averaged (random forest) boosters")
    features = int(header["max_feature_idx"]) + 1
    body = "Tree=0\n" + body.partition("\nend of trees")[0]
    trees = []
    for block in body.split("\nTree="):
        fields = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if fields.get("is_linear", "0") != "0":
            raise ValueError("Margins does not read linear trees")

        def ints(key: str, f: dict[str, str] = fields) -> np.ndarray:
            return np.array(f[key].split(), dtype=np.int64) if f.get(key) else np.empty(0, np.int64)

        def floats(key: str, f: dict[str, str] = fields) -> np.ndarray:
            return np.array(f[key].split(), dtype=np.float64) if f.get(key) else np.empty(0)

        n = int(fields["num_leaves"])
        trees.append(
            _Tree(
                num_leaves=n,
                split_feature=ints("split_feature"),
                threshold=floats("threshold"),
                decision_type=ints("decision_type"),
                left=ints("left_child"),
                right=ints("right_child"),
                leaf_value=floats("leaf_value"),
                cat_boundaries=ints("cat_boundaries"),
                cat_threshold=ints("cat_threshold"),
            )
        )
    return features, trees


def _goes_right(x: float, decision: int, threshold: float) -> bool:
    """LightGBM's ``NumericalDecision`` after its dense-row reader, for a NaN or zero `x`."""
    missing = (decision >> 2) & 3
    if math.isnan(x):
        if missing == _MISSING_NAN:
            return not decision & _DEFAULT_LEFT
        x = 0.0
    if -ZERO_THRESHOLD <= x <= ZERO_THRESHOLD:
        if missing == _MISSING_ZERO:
            return not decision & _DEFAULT_LEFT
        x = 0.0
    return not x <= threshold


class Margins:
    """The raw margins of a booster's trees (module docstring). Holds numpy arrays only and
    never changes them: several threads may call `margin` at once."""

    def __init__(self, text: str) -> None:
        features, trees = _trees(text)
        if any(t.num_leaves > MAX_LEAVES for t in trees):
            raise ValueError(f"a tree has more than {MAX_LEAVES} leaves")
        self.num_features = features
        self.num_trees = len(trees)
        numeric: list[list[tuple[float, int, int]]] = [[] for _ in range(features)]
        nan_nodes: list[list[tuple[int, int]]] = [[] for _ in range(features)]
        zero_nodes: list[list[tuple[int, int]]] = [[] for _ in range(features)]
        cats: list[tuple[int, int, int, int, int]] = []  # feature, tree, mask, words start, len
        words: list[int] = []
        by_hash = np.zeros((len(trees), 64), dtype=np.float64)
        for t, tree in enumerate(trees):
            order = _leaf_order(tree)  # leaf id -> its position, left to right
            for leaf, pos in enumerate(order):
                by_hash[t, _hash_of_bit(pos)] = tree.leaf_value[leaf]
            if tree.num_leaves == 1:
                continue
            for node in range(tree.num_leaves - 1):
                left_leaves = _leaves_under(tree, int(tree.left[node]))
                mask = (1 << 64) - 1
                for leaf in left_leaves:
                    mask &= ~(1 << order[leaf])
                mask = _signed(mask)
                f, decision = int(tree.split_feature[node]), int(tree.decision_type[node])
                if decision & _CATEGORICAL:
                    k = int(tree.threshold[node])
                    lo, hi = int(tree.cat_boundaries[k]), int(tree.cat_boundaries[k + 1])
                    cats.append((f, t, mask, len(words), hi - lo))
                    words.extend(int(w) for w in tree.cat_threshold[lo:hi])
                    continue
                threshold = float(tree.threshold[node])
                numeric[f].append((threshold, t, mask))
                if _goes_right(math.nan, decision, threshold):
                    nan_nodes[f].append((t, mask))
                if _goes_right(0.0, decision, threshold):
                    zero_nodes[f].append((t, mask))
        self._num = _packed(
            [sorted(n, key=lambda e: e[0]) for n in numeric], (np.float64, np.int64, np.int64)
        )
        self._nan = _packed(nan_nodes, (np.int64, np.int64))
        self._zero = _packed(zero_nodes, (np.int64, np.int64))
        cats.sort(key=lambda c: (c[0], c[1]))
        self._cats = np.array(cats, dtype=np.int64).reshape(-1, 5)
        self._cat_words = np.array(words, dtype=np.int64)
        self._by_hash = by_hash.ravel()

    @classmethod
    def from_booster(cls, booster: Any) -> Margins:
        """The margins of the trees ``booster.predict`` uses by default (up to the best
        iteration when the booster has one). Raises ValueError for a booster it cannot read
        (module docstring)."""
        return cls(booster.model_to_string())

    def margin(self, M: np.ndarray) -> np.ndarray:
        """The raw margin of every row of ``M`` (rows × `num_features`, float; NaN = missing),
        bit for bit ``booster.predict(M, raw_score=True)``."""
        X = np.ascontiguousarray(M, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.num_features:
            raise ValueError(
                f"expected a matrix of {self.num_features} feature columns, got shape {X.shape}"
            )
        out = np.empty(X.shape[0], dtype=np.float64)
        args = (*self._num, *self._nan, *self._zero, self._cats, self._cat_words, self._by_hash)
        _margins(X, out, self.num_trees, *args)
        return out


def margins(booster: Any, X: np.ndarray) -> np.ndarray:
    """``booster.predict(X, raw_score=True)`` bit for bit: by `Margins` when it reads the
    booster, else by LightGBM."""
    try:
        engine = Margins.from_booster(booster)
    except ValueError:
        return np.asarray(booster.predict(X, raw_score=True), np.float64)
    return engine.margin(X)


def _signed(mask: int) -> int:
    """A 64-bit mask as the int64 of the same bits."""
    return mask - (1 << 64) if mask >= 1 << 63 else mask


def _hash_of_bit(pos: int) -> int:
    return ((1 << pos) * _DEBRUIJN & 0xFFFFFFFFFFFFFFFF) >> 58


def _leaf_order(tree: _Tree) -> list[int]:
    """Each leaf's position left to right (leaf id -> position)."""
    order = [0] * tree.num_leaves
    if tree.num_leaves == 1:
        return order
    for pos, leaf in enumerate(_leaves_under(tree, 0)):
        order[leaf] = pos
    return order


def _leaves_under(tree: _Tree, child: int) -> list[int]:
    """The leaves under a child reference (>= 0 a node, < 0 the leaf ``~child``), left to
    right."""
    out: list[int] = []
    stack = [child]
    while stack:
        c = stack.pop()
        if c < 0:
            out.append(~c)
        else:
            stack.append(int(tree.right[c]))
            stack.append(int(tree.left[c]))
    return out


def _packed(lists: list[list[tuple[Any, ...]]], dtypes: tuple[type, ...]) -> tuple[np.ndarray, ...]:
    """(starts, then one array per field of the tuples) of per-feature lists of nodes: feature
    f's entries are rows starts[f] to starts[f + 1] of every field's array."""
    starts = np.zeros(len(lists) + 1, dtype=np.int64)
    np.cumsum([len(x) for x in lists], out=starts[1:])
    flat = [e for x in lists for e in x]
    return (starts, *(np.array([e[i] for e in flat], dtype=d) for i, d in enumerate(dtypes)))


@njit(cache=True, nogil=True)
def _margins(
    X, out, n_trees, num_starts, num_thr, num_tree, num_mask, nan_starts, nan_tree, nan_mask,
    zero_starts, zero_tree, zero_mask, cats, cat_words, by_hash,
):  # fmt: skip
    masks = np.empty(n_trees, dtype=np.int64)
    n_features = X.shape[1]
    for r in range(X.shape[0]):
        masks[:] = -1
        for f in range(n_features):
            x = X[r, f]
            if math.isnan(x):
                for k in range(nan_starts[f], nan_starts[f + 1]):
                    masks[nan_tree[k]] &= nan_mask[k]
            elif -ZERO_THRESHOLD <= x <= ZERO_THRESHOLD:
                for k in range(zero_starts[f], zero_starts[f + 1]):
                    masks[zero_tree[k]] &= zero_mask[k]
            else:
                k, end = num_starts[f], num_starts[f + 1]
                while k < end and num_thr[k] < x:
                    masks[num_tree[k]] &= num_mask[k]
                    k += 1
        for c in range(cats.shape[0]):
            x = X[r, cats[c, 0]]
            right = True
            if not math.isnan(x) and x > -1.0 and x < 2147483648.0:
                code = int(x)
                word = code >> 5
                if word < cats[c, 4]:
                    right = ((cat_words[cats[c, 3] + word] >> (code & 31)) & 1) == 0
            if right:
                masks[cats[c, 1]] &= cats[c, 2]
        total = 0.0
        for t in range(n_trees):
            m = masks[t]
            low = np.uint64(m & -m)
            h = (low * np.uint64(_DEBRUIJN)) >> np.uint64(58)
            total += by_hash[t * 64 + np.int64(h)]
        out[r] = total
