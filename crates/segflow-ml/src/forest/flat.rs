//! The prediction layout of a group of fitted trees.
//!
//! A [`Tree`] stores what the saved-model format holds: 40-byte nodes, their class fractions in
//! a parallel array. Walking it drags training-only fields (row counts, impurity) through the
//! cache and asks at every step whether the node is a leaf. Prediction walks a [`FlatGroup`]
//! instead, laid out from a group of consecutive trees when a prediction starts.
//!
//! # Rank-coded splits (the usual layout)
//! For each feature, the group keeps the distinct split thresholds of its trees, ascending. A
//! feature value `x` is coded as the number of those thresholds below it (NaN as [`NAN_CODE`]),
//! and a split on threshold `t` keeps `bound` = (the code of `t`) + 1. Then
//! `code(x) < bound` exactly when `x <= t`:
//! - `x <= t`: every threshold below `x` is below `t`, so `code(x) <= code(t)`;
//! - `x > t`: `t` and every threshold below it are below `x`, so `code(x) >= code(t) + 1`;
//! - NaN: its code is above every bound (a feature with more than [`MAX_RANKED_THRESHOLDS`]
//!   distinct thresholds is not coded), so NaN goes right, as `NaN <= t` is false;
//! - `-0.0` and `0.0` are one threshold (they compare equal), and infinite thresholds rank like
//!   any other; a split on a NaN threshold (only a loaded model can hold one) gets bound 0, so
//!   nothing goes left, as `x <= NaN` is false.
//!
//! So a node is 8 bytes (left child `u32`, feature `u16`, bound `u16`), eight to a cache line,
//! and a row is 2 bytes a value. A prediction task walks each tree over all its rows (up to
//! 37k, `forest.rs`) before the next tree, and the nodes of a 47k-node tree (375 KB) then stay
//! in a core's 512 KB of L2 for the whole pass, where 16-byte nodes beside `f64` rows did not.
//! On 100 such trees (`forest/predict` in benches/kernels), rank coding made predicting 260k
//! rows and contributions of 65k rows about 1.2× as fast as the same walks over `f64`
//! thresholds and rows. Rows are coded once per walk (a binary search per value, against a
//! hundred tree walks): a group's bounds count the thresholds of the group before when that
//! table holds all of its own ([`lay_out_ranked`]), so consecutive groups share the codes. The
//! thresholds are gathered while the trees are laid out, in the same pass over their nodes.
//!
//! A group whose trees split a feature on more than [`MAX_RANKED_THRESHOLDS`] distinct values,
//! or a model with more features than a `u16` numbers, is laid out plainly instead: 16-byte
//! nodes holding the `f64` threshold and `u32` feature, walked over the raw rows. Fitted models
//! never need it (a feature has at most 255 bin edges), but any loaded model still predicts.
//!
//! # Shared by both layouts
//! - A split's two children are side by side, so a node stores only its left child and a walk
//!   steps to `left + (goes right)` without a branch. A fitted tree is stored that way already
//!   (a split appends both children), so laying it out is one pass in storage order, keeping
//!   its node numbers; any other tree is laid out by walking it.
//! - A leaf is its own right child and sends every row right (bound 0, or a NaN threshold), so
//!   a row that reaches it stays there whatever its values: the walks step several rows in
//!   lockstep without asking at every step which of them are done.
//! - Predictions read a leaf's positive-class fraction from the stored tree when the layout
//!   kept its node numbers; contributions, which read one at every step, get all of them
//!   copied into an array beside the nodes ([`Purpose`]).
//!
//! The layout is not kept with the model: its 8 bytes a node (16 for contributions, 8 more when
//! plain) add to the stored tree's 56 only while a prediction walks it, and a prediction lays
//! out a group of trees at a time (`forest.rs`), where a kept copy would hold them as long as
//! the model lives (350 MB for a 44M-node forest), and a loaded or edited model can never
//! predict with a stale layout. The price is laying out every tree on every call: for 100
//! full-depth trees of 47k nodes, about 45 ms on two threads, some 60 % of predicting 10k rows.
//!
//! Results are bit-identical to walking the `Tree`: the same comparisons reach the same leaves,
//! whose stored fractions are read or copied exactly, and every sum adds the same terms in the
//! same order (per row: trees in order, then a path root first).

use std::borrow::Cow;
use std::sync::Arc;

use rayon::prelude::*;

use super::{ForestError, POSITIVE_CLASS, Tree};

/// Rows walked through a tree in lockstep. Lockstep executes more instructions than walking one
/// row at a time (lanes idle at their leaf, no early exit), yet runs 2-3× faster: a lone walk
/// is a chain of dependent loads and, when it branches, mispredicts about every other step.
/// Measured on 100 full-depth trees (`forest/predict` in benches/kernels): 8 beats 4 by a tenth
/// and 16 by a third (a group waits for its deepest row, and its state no longer fits in
/// registers).
pub(super) const LANES: usize = 8;

/// Rows walked in lockstep by [`FlatTree::add_path_contributions`], whose steps also add into
/// their row's output. Measured on the same trees: 4 beats 2 by a fifth and 8 by a quarter; a
/// branch that skips the addition at a leaf beats adding `-0.0` there.
const CONTRIBUTION_LANES: usize = 4;

/// Most distinct thresholds a feature may have for the rank-coded layout: values are then
/// coded `0..=MAX_RANKED_THRESHOLDS`, bounds are at most that, and both stay below
/// [`NAN_CODE`].
const MAX_RANKED_THRESHOLDS: usize = u16::MAX as usize - 1;

/// Code of a missing (NaN) value: above every bound, so it always goes right.
const NAN_CODE: u16 = u16::MAX;

/// What the walks need of a node, in either layout.
trait FlatNode: Copy + Send + Sync {
    /// What a row holds for this layout: raw feature values, or their codes.
    type Value: Copy + Send + Sync;
    /// A node that sends every row right, its children not set yet.
    fn sending_everything_right() -> Self;
    /// `self` with its left child at `left` (and so its right child at `left + 1`).
    fn with_left(self, left: u32) -> Self;
    fn feature(self) -> usize;
    fn left(self) -> u32;
    /// Whether a row with `value` at this node's feature goes to the right child.
    fn goes_right(self, value: Self::Value) -> bool;

    /// A leaf at flat index `here`: its own right child, sending every row there.
    fn leaf(here: u32) -> Self {
        // For a leaf root, u32::MAX, which `right` and `next` wrap back to 0.
        Self::sending_everything_right().with_left(here.wrapping_sub(1))
    }

    /// Index of the right child; a leaf's own index.
    #[inline(always)]
    fn right(self) -> usize {
        self.left().wrapping_add(1) as usize
    }

    /// The child a row with `value` at this node's feature goes to; a leaf's own index.
    #[inline(always)]
    fn next(self, value: Self::Value) -> usize {
        self.left().wrapping_add(u32::from(self.goes_right(value))) as usize
    }
}

/// A node of the plain layout, walked over raw feature values.
#[derive(Debug, Clone, Copy)]
struct PlainNode {
    /// Split: rows with `x[feature] <= threshold` go left, all others (NaN included) right.
    /// Leaf: NaN, so every row goes right, to the leaf itself.
    threshold: f64,
    /// Index of the left child; the right child is the next node.
    left: u32,
    /// Feature tested; 0 for a leaf.
    feature: u32,
}

impl FlatNode for PlainNode {
    type Value = f64;
    fn sending_everything_right() -> Self {
        PlainNode {
            threshold: f64::NAN,
            left: 0,
            feature: 0,
        }
    }
    fn with_left(self, left: u32) -> Self {
        PlainNode { left, ..self }
    }
    #[inline(always)]
    fn feature(self) -> usize {
        self.feature as usize
    }
    #[inline(always)]
    fn left(self) -> u32 {
        self.left
    }
    #[inline(always)]
    #[expect(
        clippy::neg_cmp_op_on_partial_ord,
        reason = "NaN goes right: `!(NaN <= t)` holds where `NaN > t` does not"
    )]
    fn goes_right(self, value: f64) -> bool {
        !(value <= self.threshold)
    }
}

/// A node of the rank-coded layout, walked over value codes (see the module docs).
#[derive(Debug, Clone, Copy)]
struct RankedNode {
    /// Index of the left child; the right child is the next node.
    left: u32,
    /// Feature tested; 0 for a leaf.
    feature: u16,
    /// Rows whose code is below it go left. A leaf's is 0, so every row goes right, to the
    /// leaf itself. While a group is being laid out: the threshold's id in its batch plus 1
    /// (see [`lay_out_ranked`]).
    bound: u16,
}

impl FlatNode for RankedNode {
    type Value = u16;
    fn sending_everything_right() -> Self {
        RankedNode {
            left: 0,
            feature: 0,
            bound: 0,
        }
    }
    fn with_left(self, left: u32) -> Self {
        RankedNode { left, ..self }
    }
    #[inline(always)]
    fn feature(self) -> usize {
        usize::from(self.feature)
    }
    #[inline(always)]
    fn left(self) -> u32 {
        self.left
    }
    #[inline(always)]
    fn goes_right(self, code: u16) -> bool {
        code >= self.bound
    }
}

/// One tree laid out for prediction.
#[derive(Debug, Clone)]
struct FlatTree<'t, N> {
    nodes: Vec<N>,
    /// Positive-class fraction of every node, indexed like `nodes`.
    positive_fractions: PositiveFractions<'t>,
}

/// What a group's walks will read, which decides where a tree's positive-class fractions are
/// read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Purpose {
    /// Leaf values only, one per row and tree: read from the stored tree when the layout
    /// numbers the nodes as it does (a fitted tree's), so laying out does not copy them, and
    /// writes half the bytes.
    Predictions,
    /// The fraction of every node on every path: copied next to the nodes, 8 bytes each, where
    /// the stored tree keeps them among the other classes'.
    Contributions,
}

/// The positive-class fractions of a laid-out tree's nodes, by flat index.
#[derive(Debug, Clone)]
enum PositiveFractions<'t> {
    /// Those of the stored tree, whose node numbers are the layout's.
    InStoredTree(&'t Tree),
    Copied(Vec<f64>),
}

impl PositiveFractions<'_> {
    #[inline]
    fn at(&self, index: usize) -> f64 {
        match self {
            // A laid-out tree's nodes all have one (checked on its root: a tree's nodes all
            // have as many class fractions).
            PositiveFractions::InStoredTree(tree) => tree
                .node(index)
                .and_then(|node| node.class_fractions.get(POSITIVE_CLASS).copied())
                .unwrap_or(f64::NAN),
            PositiveFractions::Copied(fractions) => fractions[index],
        }
    }
}

/// Per feature, distinct non-NaN split thresholds, ascending (`-0.0` and `0.0` kept once): those
/// of a group's trees, or of an earlier group's table that holds them all. What a value's code
/// counts (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ThresholdRanks {
    per_feature: Vec<Vec<f64>>,
}

/// `thresholds` ascending and each once, as a table holds them. Distinct by `==`, so -0.0 and
/// 0.0 (side by side in the total order) are kept once.
fn ascending_distinct(mut thresholds: Vec<f64>) -> Vec<f64> {
    thresholds.sort_unstable_by(f64::total_cmp);
    thresholds.dedup();
    thresholds
}

impl ThresholdRanks {
    /// The table of a fit's bins: each feature's `upper_edges` (ascending, as binning makes
    /// them) and `f64::MAX`, the two kinds of threshold a fitted split stores (`binning.rs`).
    /// It holds every threshold of the fit's trees, whichever they split on, so a walk of the
    /// forest codes its rows once, where tables built group by group grew as later groups met
    /// edges the earlier ones had not split on, and the rows were coded again: in the 100M-line
    /// demo, coding the out-of-bag walk's 1.7M rows for its 7 groups took 2.4 CPU seconds of
    /// the forest's fit (perf).
    pub(super) fn of_bin_edges(upper_edges: &[Vec<f64>]) -> ThresholdRanks {
        let per_feature = upper_edges
            .iter()
            .map(|edges| ascending_distinct(edges.iter().copied().chain([f64::MAX]).collect()))
            .collect();
        ThresholdRanks { per_feature }
    }

    /// Whether every threshold of `per_feature` (a group's own, ascending) is in this table.
    fn holds(&self, per_feature: &[Vec<f64>]) -> bool {
        self.per_feature.len() == per_feature.len()
            && self
                .per_feature
                .iter()
                .zip(per_feature)
                .all(|(table, own)| {
                    own.iter().all(|&threshold| {
                        let at = table.partition_point(|&held| held < threshold);
                        table.get(at) == Some(&threshold)
                    })
                })
    }

    /// This table and `per_feature` (a group's own, ascending) merged, each feature's
    /// thresholds ascending and distinct.
    fn merged_with(&self, per_feature: &[Vec<f64>]) -> ThresholdRanks {
        let per_feature = self
            .per_feature
            .iter()
            .zip(per_feature)
            .map(|(table, own)| ascending_distinct(table.iter().chain(own).copied().collect()))
            .collect();
        ThresholdRanks { per_feature }
    }

    /// The bound of each of `per_feature`'s thresholds (a group's own, all held in this table)
    /// in this table: `bounds[feature][i]` is 1 + the place of `per_feature[feature][i]`.
    fn bounds_of(&self, per_feature: &[Vec<f64>]) -> Vec<Vec<u16>> {
        per_feature
            .iter()
            .zip(&self.per_feature)
            .map(|(own, all)| {
                own.iter()
                    .map(|&threshold| ThresholdRanks::code(all, threshold) + 1)
                    .collect()
            })
            .collect()
    }

    /// Code of `value` among `thresholds` (one feature's, at most [`MAX_RANKED_THRESHOLDS`]):
    /// how many are below it; NaN's is [`NAN_CODE`].
    #[inline]
    fn code(thresholds: &[f64], value: f64) -> u16 {
        if value.is_nan() {
            NAN_CODE
        } else {
            thresholds.partition_point(|&threshold| threshold < value) as u16
        }
    }

    /// The codes of `rows` (row-major, one value per feature), laid out alike.
    fn encode(&self, rows: &[f64]) -> Vec<u16> {
        let mut codes = vec![0; rows.len()];
        self.encode_into(rows, &mut codes);
        codes
    }

    /// Writes the codes of `rows` into `codes`, laid out alike (as long).
    fn encode_into(&self, rows: &[f64], codes: &mut [u16]) {
        let n_features = self.per_feature.len();
        // Feature by feature: one feature's thresholds stay in cache for every row, and the
        // searches of successive rows are independent, so they overlap.
        for (feature, thresholds) in self.per_feature.iter().enumerate() {
            for (code, &value) in codes[feature..]
                .iter_mut()
                .step_by(n_features)
                .zip(rows[feature..].iter().step_by(n_features))
            {
                *code = Self::code(thresholds, value);
            }
        }
    }
}

/// The codes of a walk's rows, for the rank-coded groups that share one thresholds table
/// ([`FlatGroup::code_rows`]).
#[derive(Debug)]
pub(super) struct RowCodes {
    ranks: Arc<ThresholdRanks>,
    codes: Vec<u16>,
}

/// What a walk's task reads: all of the walk's rows (`values`, row-major, and their codes when
/// coded for the group, [`FlatGroup::code_rows`]), from row `first_row` on.
#[derive(Debug, Clone, Copy)]
pub(super) struct TaskRows<'r> {
    pub(super) values: &'r [f64],
    pub(super) coded: Option<&'r RowCodes>,
    pub(super) first_row: usize,
}

/// Rows coded per rayon task by [`FlatGroup::code_rows`].
const CODING_TASK_ROWS: usize = 1 << 14;

/// The distinct (feature, threshold) pairs met while laying out a batch of trees, each with an
/// id: its place among its feature's pairs, in the order they were met. Open addressing with
/// linear probing, at most half full.
#[derive(Debug, Clone, Default)]
struct ThresholdIds {
    /// A power of two many, or none.
    slots: Vec<ThresholdSlot>,
    occupied: usize,
    /// Per feature, its thresholds in id order.
    per_feature: Vec<Vec<f64>>,
}

#[derive(Debug, Clone, Copy)]
struct ThresholdSlot {
    /// `u32::MAX` when the slot is free (rank-coded features are below `u16::MAX`).
    feature: u32,
    id: u32,
    threshold_bits: u64,
}

impl ThresholdSlot {
    const FREE: ThresholdSlot = ThresholdSlot {
        feature: u32::MAX,
        id: 0,
        threshold_bits: 0,
    };
}

impl ThresholdIds {
    /// Slots of a table's first allocation: the distinct thresholds of a fitted forest (at most
    /// 255 per feature) fill a few thousand.
    const FIRST_CAPACITY: usize = 1 << 12;

    fn new(n_features: usize) -> Self {
        ThresholdIds {
            slots: Vec::new(),
            occupied: 0,
            per_feature: vec![Vec::new(); n_features],
        }
    }

    /// Index of the slot holding the pair, or of the free slot where it would go.
    #[inline]
    fn find(&self, feature: u32, threshold_bits: u64) -> usize {
        let mask = self.slots.len() - 1;
        // Fibonacci hashing: the product's top bits depend on every bit of the key (a round
        // threshold such as 3.5 has only zeros in its low bits).
        let mixed = (threshold_bits ^ u64::from(feature).rotate_right(20))
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let mut slot = (mixed >> (64 - self.slots.len().trailing_zeros())) as usize;
        loop {
            let held = self.slots[slot];
            if held.feature == u32::MAX
                || (held.feature == feature && held.threshold_bits == threshold_bits)
            {
                return slot;
            }
            slot = (slot + 1) & mask;
        }
    }

    /// The id of (`feature` (below the table's feature count), `threshold` (not NaN)), given
    /// the next free id when the pair is new. `-0.0` and `0.0` get ids of their own; both
    /// rank as the one threshold they are.
    fn id(&mut self, feature: u32, threshold: f64) -> u32 {
        if 2 * (self.occupied + 1) > self.slots.len() {
            self.grow();
        }
        let threshold_bits = threshold.to_bits();
        let slot = self.find(feature, threshold_bits);
        if self.slots[slot].feature == u32::MAX {
            let thresholds = &mut self.per_feature[feature as usize];
            self.slots[slot] = ThresholdSlot {
                feature,
                id: thresholds.len() as u32,
                threshold_bits,
            };
            thresholds.push(threshold);
            self.occupied += 1;
        }
        self.slots[slot].id
    }

    fn grow(&mut self) {
        let capacity = (2 * self.slots.len()).max(Self::FIRST_CAPACITY);
        let old = std::mem::replace(&mut self.slots, vec![ThresholdSlot::FREE; capacity]);
        for held in old.into_iter().filter(|held| held.feature != u32::MAX) {
            let slot = self.find(held.feature, held.threshold_bits);
            self.slots[slot] = held;
        }
    }
}

/// Consecutive trees laid out by one rayon task of [`lay_out_ranked`], with the thresholds
/// they split on.
struct RankedBatch<'t> {
    thresholds: ThresholdIds,
    /// Each tree laid out, or why it cannot be, in tree order.
    trees: Vec<Result<FlatTree<'t, RankedNode>, ForestError>>,
    /// Whether a feature has more thresholds than a bound can number.
    overflowed: bool,
}

/// Lays out `trees` (the first is tree number `first_tree`, named in errors) rank-coded, for
/// `purpose`; `None` when a feature has more than `max_thresholds` (at most
/// [`MAX_RANKED_THRESHOLDS`]) distinct thresholds, and the group must be laid out plainly.
///
/// The bounds count thresholds of `known` (an earlier group's table) when it holds every
/// threshold of these trees, so rows coded for that group serve this one: a value's code among
/// more thresholds still falls below a split's bound exactly when the value is at most its
/// threshold, as the module docs show for any table the threshold is in. When `known` lacks
/// some, the table is `known` merged with this group's (its own alone if that is too long), so
/// later groups are more likely to find theirs in it. A forest fitted on 1.7M customers is
/// walked in seven groups (`forest.rs`), whose thresholds are the same few bin edges: its rows
/// were coded seven times, a tenth of scoring them.
///
/// Ranks are known only once every tree's thresholds are, but the stored nodes are read once:
/// each rayon task lays out a batch of trees with each split's bound holding 1 + the id of its
/// threshold in the batch's own table (0 stays for leaves and NaN thresholds), and a second
/// pass over the laid-out nodes, a fifth of the stored bytes, turns ids into bounds (gathering
/// the thresholds in a pass of their own read every stored node twice).
fn lay_out_ranked<'t>(
    trees: &'t [Tree],
    first_tree: usize,
    n_features: usize,
    purpose: Purpose,
    max_thresholds: usize,
    known: Option<Arc<ThresholdRanks>>,
) -> Result<Option<Layout<'t>>, ForestError> {
    // Two batches a thread: each batch has a table of its own to fill and to turn into bounds,
    // and rayon left to itself made a batch of every three or four trees.
    let batch_trees = trees
        .len()
        .div_ceil(2 * rayon::current_num_threads())
        .max(1);
    let mut batches: Vec<RankedBatch<'t>> = trees
        .par_chunks(batch_trees)
        .enumerate()
        .map(|(batch_index, batch_of_trees)| {
            let mut thresholds = ThresholdIds::new(n_features);
            let mut overflowed = false;
            let mut split = |feature: u32, threshold: f64| {
                let mut id_bound = 0;
                if !threshold.is_nan() {
                    let id = thresholds.id(feature, threshold);
                    match u16::try_from(id + 1) {
                        Ok(bound) if bound < u16::MAX => id_bound = bound,
                        _ => overflowed = true,
                    }
                }
                RankedNode {
                    left: 0,
                    feature: feature as u16,
                    bound: id_bound,
                }
            };
            let first_in_batch = first_tree + batch_index * batch_trees;
            let laid_out = batch_of_trees
                .iter()
                .enumerate()
                .map(|(offset, tree)| {
                    lay_out(
                        tree,
                        first_in_batch + offset,
                        n_features,
                        purpose,
                        &mut split,
                    )
                })
                .collect();
            RankedBatch {
                thresholds,
                trees: laid_out,
                overflowed,
            }
        })
        .collect();

    // In tree order (batches are), so the first malformed tree is the error whatever the
    // threads.
    let mut flat_trees: Vec<(usize, FlatTree<'t, RankedNode>)> = Vec::with_capacity(trees.len());
    for (batch_index, batch) in batches.iter_mut().enumerate() {
        for flat in batch.trees.drain(..) {
            flat_trees.push((batch_index, flat?));
        }
    }
    if batches.iter().any(|batch| batch.overflowed) {
        return Ok(None);
    }

    let mut per_feature: Vec<Vec<f64>> = vec![Vec::new(); n_features];
    for batch in &batches {
        for (all, batch) in per_feature.iter_mut().zip(&batch.thresholds.per_feature) {
            all.extend(batch);
        }
    }
    let per_feature: Vec<Vec<f64>> = per_feature.into_iter().map(ascending_distinct).collect();
    if per_feature
        .iter()
        .any(|thresholds| thresholds.len() > max_thresholds)
    {
        return Ok(None);
    }
    let ranks = match known {
        Some(known) if known.holds(&per_feature) => known,
        Some(known) if known.per_feature.len() == n_features => {
            let merged = known.merged_with(&per_feature);
            if merged
                .per_feature
                .iter()
                .all(|thresholds| thresholds.len() <= max_thresholds)
            {
                Arc::new(merged)
            } else {
                Arc::new(ThresholdRanks { per_feature })
            }
        }
        _ => Arc::new(ThresholdRanks { per_feature }),
    };
    // bounds[batch][feature][id]: the bound of a split on that threshold.
    let bounds: Vec<Vec<Vec<u16>>> = batches
        .iter()
        .map(|batch| ranks.bounds_of(&batch.thresholds.per_feature))
        .collect();
    flat_trees
        .par_iter_mut()
        .for_each(|(batch_index, flat)| flat.rebound(&bounds[*batch_index]));
    Ok(Some(Layout::Ranked {
        ranks,
        trees: flat_trees.into_iter().map(|(_, flat)| flat).collect(),
    }))
}

/// The trees of a group in one of the two layouts.
#[derive(Debug, Clone)]
enum Layout<'t> {
    Ranked {
        ranks: Arc<ThresholdRanks>,
        trees: Vec<FlatTree<'t, RankedNode>>,
    },
    Plain {
        trees: Vec<FlatTree<'t, PlainNode>>,
    },
}

/// Consecutive trees of a model laid out for prediction (see the module docs).
#[derive(Debug, Clone)]
pub(super) struct FlatGroup<'t> {
    n_features: usize,
    layout: Layout<'t>,
}

impl<'t> FlatGroup<'t> {
    /// Lays out `trees`, the first of which is tree number `first_tree` (named in errors) of a
    /// model fitted on `n_features` features, rank-coded against `known` (the table of the
    /// group walked before, [`FlatGroup::ranks`]) when that holds every threshold of these
    /// trees, so the rows coded for that group serve this one ([`FlatGroup::code_rows`]).
    /// Refuses what would make a walk panic or never end: a tree without nodes, a node without
    /// a positive-class fraction, a child index outside the tree, a node reached twice (a cycle
    /// or a shared subtree), or a split on a feature the model does not have. The first
    /// malformed tree is the one reported.
    pub(super) fn new(
        trees: &'t [Tree],
        first_tree: usize,
        n_features: usize,
        purpose: Purpose,
        known: Option<Arc<ThresholdRanks>>,
    ) -> Result<FlatGroup<'t>, ForestError> {
        Self::laid_out(
            trees,
            first_tree,
            n_features,
            purpose,
            MAX_RANKED_THRESHOLDS,
            known,
        )
    }

    /// [`FlatGroup::new`] without a known table, rank-coding only when no feature has more
    /// than `max_ranked_thresholds` distinct thresholds (tests lower it to reach the plain
    /// layout).
    #[cfg(test)]
    pub(super) fn with_rank_limit(
        trees: &'t [Tree],
        first_tree: usize,
        n_features: usize,
        purpose: Purpose,
        max_ranked_thresholds: usize,
    ) -> Result<FlatGroup<'t>, ForestError> {
        Self::laid_out(
            trees,
            first_tree,
            n_features,
            purpose,
            max_ranked_thresholds,
            None,
        )
    }

    fn laid_out(
        trees: &'t [Tree],
        first_tree: usize,
        n_features: usize,
        purpose: Purpose,
        max_ranked_thresholds: usize,
        known: Option<Arc<ThresholdRanks>>,
    ) -> Result<FlatGroup<'t>, ForestError> {
        let ranked = if n_features <= usize::from(u16::MAX) {
            let max_thresholds = max_ranked_thresholds.min(MAX_RANKED_THRESHOLDS);
            lay_out_ranked(
                trees,
                first_tree,
                n_features,
                purpose,
                max_thresholds,
                known,
            )?
        } else {
            None
        };
        let layout = match ranked {
            Some(ranked) => ranked,
            None => Layout::Plain {
                trees: lay_out_plain(trees, first_tree, n_features, purpose)?,
            },
        };
        Ok(FlatGroup { n_features, layout })
    }

    /// The group holding its own copy of every positive-class fraction it reads, so it no
    /// longer borrows the stored trees (a group laid out for contributions already does).
    pub(super) fn into_owned(self) -> FlatGroup<'static> {
        fn owned<N>(trees: Vec<FlatTree<'_, N>>) -> Vec<FlatTree<'static, N>> {
            trees
                .into_iter()
                .map(|tree| {
                    let fractions = match tree.positive_fractions {
                        PositiveFractions::Copied(fractions) => fractions,
                        stored => (0..tree.nodes.len()).map(|node| stored.at(node)).collect(),
                    };
                    FlatTree {
                        nodes: tree.nodes,
                        positive_fractions: PositiveFractions::Copied(fractions),
                    }
                })
                .collect()
        }
        let layout = match self.layout {
            Layout::Ranked { ranks, trees } => Layout::Ranked {
                ranks,
                trees: owned(trees),
            },
            Layout::Plain { trees } => Layout::Plain {
                trees: owned(trees),
            },
        };
        FlatGroup {
            n_features: self.n_features,
            layout,
        }
    }

    /// Whether the group is rank-coded (the alternative being the plain layout).
    #[cfg(test)]
    pub(super) fn is_rank_coded(&self) -> bool {
        matches!(self.layout, Layout::Ranked { .. })
    }

    /// Bytes the layout holds per node, on average over the group: the node, and its
    /// positive-class fraction where that is copied.
    #[cfg(test)]
    pub(super) fn bytes_per_node(&self) -> f64 {
        fn bytes<N>(trees: &[FlatTree<'_, N>]) -> (usize, usize) {
            trees.iter().fold((0, 0), |(bytes, nodes), tree| {
                let copied = match &tree.positive_fractions {
                    PositiveFractions::Copied(fractions) => fractions.len(),
                    PositiveFractions::InStoredTree(_) => 0,
                };
                (
                    bytes + tree.nodes.len() * size_of::<N>() + copied * size_of::<f64>(),
                    nodes + tree.nodes.len(),
                )
            })
        }
        let (bytes, nodes) = match &self.layout {
            Layout::Ranked { trees, .. } => bytes(trees),
            Layout::Plain { trees } => bytes(trees),
        };
        bytes as f64 / nodes as f64
    }

    /// The positive-class fraction at each tree's root, in tree order: its prediction before
    /// any split.
    pub(super) fn root_positive_fractions(&self) -> Vec<f64> {
        match &self.layout {
            Layout::Ranked { trees, .. } => {
                trees.iter().map(|t| t.positive_fractions.at(0)).collect()
            }
            Layout::Plain { trees } => trees.iter().map(|t| t.positive_fractions.at(0)).collect(),
        }
    }

    /// `groups` (of one forest, in tree order) with every rank-coded group's bounds counted
    /// among the thresholds of all of them, so that rows coded once serve every group (the
    /// codes of a value against a table that holds a split's threshold fall below its bound
    /// exactly when the value is at most the threshold, module docs). Unchanged when a
    /// feature's thresholds over all the groups are more than a bound can number.
    ///
    /// For a layout kept and walked block after block ([`super::ContributionLayout`]): laid
    /// out one after the other, each against the table of the group before, the 7 groups of
    /// the 100M-line demo's forest rarely shared one (a later group splits on bin edges the
    /// earlier ones did not), and each of the 10 score blocks coded its rows again and again:
    /// 3.5 of the 44 CPU seconds of `segflow score`, 0.65 with one table.
    pub(super) fn sharing_one_table(groups: Vec<FlatGroup<'t>>) -> Vec<FlatGroup<'t>> {
        let Some(union) = groups
            .iter()
            .filter_map(FlatGroup::ranks)
            .reduce(|union, ranks| {
                if union.holds(&ranks.per_feature) {
                    union
                } else {
                    Arc::new(union.merged_with(&ranks.per_feature))
                }
            })
        else {
            return groups;
        };
        if union
            .per_feature
            .iter()
            .any(|thresholds| thresholds.len() > MAX_RANKED_THRESHOLDS)
        {
            return groups;
        }
        groups
            .into_iter()
            .map(|group| group.rebased_onto(&union))
            .collect()
    }

    /// The group with its bounds counted among `table`'s thresholds, which hold all of its
    /// own; itself when plain or already against `table`.
    fn rebased_onto(self, table: &Arc<ThresholdRanks>) -> FlatGroup<'t> {
        let n_features = self.n_features;
        let (ranks, mut trees) = match self.layout {
            Layout::Ranked { ranks, trees } if !Arc::ptr_eq(&ranks, table) => (ranks, trees),
            layout => return FlatGroup { n_features, layout },
        };
        debug_assert!(table.holds(&ranks.per_feature));
        let new_bounds = table.bounds_of(&ranks.per_feature);
        trees
            .par_iter_mut()
            .for_each(|tree| tree.rebound(&new_bounds));
        FlatGroup {
            n_features,
            layout: Layout::Ranked {
                ranks: Arc::clone(table),
                trees,
            },
        }
    }

    /// The thresholds table the group's rows are coded against, for the next group to be laid
    /// out against ([`FlatGroup::new`]); `None` for the plain layout.
    pub(super) fn ranks(&self) -> Option<Arc<ThresholdRanks>> {
        match &self.layout {
            Layout::Ranked { ranks, .. } => Some(Arc::clone(ranks)),
            Layout::Plain { .. } => None,
        }
    }

    /// The codes of `rows` (row-major, `n_features` wide) for this group's walks: `kept` when it
    /// was coded against this group's table (the group before shared it), else the rows coded
    /// anew, in parallel. `None` for the plain layout, which walks the values.
    pub(super) fn code_rows(&self, rows: &[f64], kept: Option<RowCodes>) -> Option<RowCodes> {
        let Layout::Ranked { ranks, .. } = &self.layout else {
            return None;
        };
        if let Some(kept) = kept.filter(|kept| Arc::ptr_eq(&kept.ranks, ranks)) {
            return Some(kept);
        }
        let mut codes = vec![0; rows.len()];
        let chunk = CODING_TASK_ROWS * self.n_features.max(1);
        codes
            .par_chunks_mut(chunk)
            .zip(rows.par_chunks(chunk))
            .for_each(|(codes, rows)| ranks.encode_into(rows, codes));
        Some(RowCodes {
            ranks: Arc::clone(ranks),
            codes,
        })
    }

    /// The codes a rank-coded walk reads for the task's `n_rows` rows: those the walk coded
    /// when they are against `ranks`, else the rows coded here.
    fn task_codes<'r>(
        &self,
        ranks: &Arc<ThresholdRanks>,
        rows: TaskRows<'r>,
        n_rows: usize,
    ) -> Cow<'r, [u16]> {
        let values = self.task_values(rows.first_row, n_rows);
        match rows.coded {
            Some(coded) if Arc::ptr_eq(&coded.ranks, ranks) => Cow::Borrowed(&coded.codes[values]),
            _ => Cow::Owned(ranks.encode(&rows.values[values])),
        }
    }

    /// Where the values of `n_rows` rows from `first_row` on are in a walk's row-major rows.
    fn task_values(&self, first_row: usize, n_rows: usize) -> std::ops::Range<usize> {
        first_row * self.n_features..(first_row + n_rows) * self.n_features
    }

    /// Adds to `sums[i]`, tree by tree in order, the positive-class fraction of the leaf that
    /// the task's row `i` ([`TaskRows`]) falls into. Each tree walks all the rows before the
    /// next tree: the more rows, the more of them a tree's nodes, once in cache, serve.
    pub(super) fn add_leaf_values(&self, rows: TaskRows<'_>, sums: &mut [f64]) {
        match &self.layout {
            Layout::Ranked { ranks, trees } => {
                let codes = self.task_codes(ranks, rows, sums.len());
                for tree in trees {
                    tree.add_leaf_values(&codes, self.n_features, sums);
                }
            }
            Layout::Plain { trees } => {
                let rows = &rows.values[self.task_values(rows.first_row, sums.len())];
                for tree in trees {
                    tree.add_leaf_values(rows, self.n_features, sums);
                }
            }
        }
    }

    /// As [`FlatGroup::add_leaf_values`] into `sums`; and into `out_of_bag_sums`, for each tree
    /// only the rows it did not draw (`in_bag[tree][i]` false, one mask per tree of the group,
    /// indexed like `sums`), counting in `counts` the trees added there. One walk of every row
    /// gives a forest's predictions of its training rows and its out-of-bag estimate, where
    /// the two took a walk each (the out-of-bag one over a third of the rows, gathered).
    pub(super) fn add_leaf_values_and_out_of_bag(
        &self,
        rows: TaskRows<'_>,
        in_bag: &[&[bool]],
        sums: &mut [f64],
        out_of_bag_sums: &mut [f64],
        counts: &mut [usize],
    ) {
        let n_features = self.n_features;
        match &self.layout {
            Layout::Ranked { ranks, trees } => {
                let codes = self.task_codes(ranks, rows, sums.len());
                for (tree, in_bag) in trees.iter().zip(in_bag) {
                    tree.add_leaf_values_and_out_of_bag(
                        &codes,
                        n_features,
                        in_bag,
                        sums,
                        out_of_bag_sums,
                        counts,
                    );
                }
            }
            Layout::Plain { trees } => {
                let rows = &rows.values[self.task_values(rows.first_row, sums.len())];
                for (tree, in_bag) in trees.iter().zip(in_bag) {
                    tree.add_leaf_values_and_out_of_bag(
                        rows,
                        n_features,
                        in_bag,
                        sums,
                        out_of_bag_sums,
                        counts,
                    );
                }
            }
        }
    }

    /// Adds to `per_feature` (row-major, `n_features` wide, one row per row of the task,
    /// [`TaskRows`]), tree by tree in order and along each row's path root first, each step's
    /// change in positive-class fraction (child minus parent) to the split feature's entry; and
    /// to `sums[i]`, tree by tree in order, the positive-class fraction of the leaf the task's
    /// row `i` ends at, as [`FlatGroup::add_leaf_values`] does.
    pub(super) fn add_path_contributions(
        &self,
        rows: TaskRows<'_>,
        per_feature: &mut [f64],
        sums: &mut [f64],
    ) {
        if self.n_features == 0 {
            // No feature, so no split to credit.
            return;
        }
        let n_rows = per_feature.len() / self.n_features;
        match &self.layout {
            Layout::Ranked { ranks, trees } => {
                let codes = self.task_codes(ranks, rows, n_rows);
                for tree in trees {
                    tree.add_path_contributions(&codes, self.n_features, per_feature, sums);
                }
            }
            Layout::Plain { trees } => {
                let rows = &rows.values[self.task_values(rows.first_row, n_rows)];
                for tree in trees {
                    tree.add_path_contributions(rows, self.n_features, per_feature, sums);
                }
            }
        }
    }
}

/// Lays out `trees` (the first is tree number `first_tree`, named in errors) plainly, in
/// parallel; on error, the first malformed tree's.
fn lay_out_plain(
    trees: &[Tree],
    first_tree: usize,
    n_features: usize,
    purpose: Purpose,
) -> Result<Vec<FlatTree<'_, PlainNode>>, ForestError> {
    let flat: Vec<Result<FlatTree<'_, PlainNode>, ForestError>> = trees
        .par_iter()
        .enumerate()
        .map(|(offset, tree)| {
            lay_out(
                tree,
                first_tree + offset,
                n_features,
                purpose,
                &mut |feature, threshold| PlainNode {
                    threshold,
                    left: 0,
                    feature,
                },
            )
        })
        .collect();
    // Sequentially, so the error reported is the first malformed tree's whatever the threads.
    flat.into_iter().collect()
}

/// Lays out tree number `tree_index` (named in errors), making each split's node with
/// `split(feature, threshold)`. Refuses what [`FlatGroup::new`] lists.
fn lay_out<'t, N: FlatNode>(
    tree: &'t Tree,
    tree_index: usize,
    n_features: usize,
    purpose: Purpose,
    split: &mut impl FnMut(u32, f64) -> N,
) -> Result<FlatTree<'t, N>, ForestError> {
    match lay_out_as_stored(tree, n_features, purpose, split) {
        Some(flat) => Ok(flat),
        None => lay_out_depth_first(tree, tree_index, n_features, split),
    }
}

/// The layout of a tree whose stored order already is one: every split's right child right
/// after its left, no node the child of two splits, the root of none, every index inside the
/// tree. Fitted trees are stored so (a split appends its two children), and one pass in
/// storage order lays them out. `None` for any other tree, even one that could be walked:
/// [`lay_out_depth_first`] then lays it out, or names what is wrong with it.
fn lay_out_as_stored<'t, N: FlatNode>(
    tree: &'t Tree,
    n_features: usize,
    purpose: Purpose,
    split: &mut impl FnMut(u32, f64) -> N,
) -> Option<FlatTree<'t, N>> {
    // Every node has as many class fractions as the root.
    tree.node(0)?.class_fractions.get(POSITIVE_CLASS)?;
    let mut nodes = Vec::with_capacity(tree.len());
    let mut copied_fractions = Vec::new();
    if purpose == Purpose::Contributions {
        copied_fractions.reserve_exact(tree.len());
    }
    // With each node the child of at most one split and the root of none, the nodes reachable
    // from the root form a tree: every walk ends at a leaf.
    let mut is_child = vec![false; tree.len()];
    for (here, node) in tree.nodes().enumerate() {
        if purpose == Purpose::Contributions {
            copied_fractions.push(*node.class_fractions.get(POSITIVE_CLASS)?);
        }
        match node.split_feature {
            None => nodes.push(N::leaf(here as u32)),
            Some(feature) => {
                let left = node.left_child as usize;
                let right = node.right_child as usize;
                if feature as usize >= n_features
                    || left == 0
                    || right != left + 1
                    || right >= tree.len()
                    || std::mem::replace(&mut is_child[left], true)
                    || std::mem::replace(&mut is_child[right], true)
                {
                    return None;
                }
                nodes.push(split(feature, node.threshold).with_left(left as u32));
            }
        }
    }
    let positive_fractions = match purpose {
        Purpose::Predictions => PositiveFractions::InStoredTree(tree),
        Purpose::Contributions => PositiveFractions::Copied(copied_fractions),
    };
    Some(FlatTree {
        nodes,
        positive_fractions,
    })
}

/// The layout of any tree that can be walked, built by walking it depth first from the root
/// and placing each split's children side by side; the first problem met on the way (in the
/// order the stored tree's own walk would meet it) is the error.
fn lay_out_depth_first<'t, N: FlatNode>(
    tree: &'t Tree,
    tree_index: usize,
    n_features: usize,
    split: &mut impl FnMut(u32, f64) -> N,
) -> Result<FlatTree<'t, N>, ForestError> {
    let malformed = |node: usize, problem: &'static str| ForestError::MalformedTree {
        tree: tree_index,
        node,
        problem,
    };
    if tree.is_empty() {
        return Err(malformed(0, "the tree has no nodes"));
    }
    // Every slot is written when its node is taken from `pending`.
    let mut nodes = vec![N::sending_everything_right()];
    let mut positive_fractions = vec![0.0];
    let mut reached = vec![false; tree.len()];
    // (node in `tree`, its flat index), left children taken first.
    let mut pending: Vec<(usize, usize)> = vec![(0, 0)];
    while let Some((source, here)) = pending.pop() {
        let node = tree
            .node(source)
            .ok_or_else(|| malformed(source, "a child index points outside the tree"))?;
        if std::mem::replace(&mut reached[source], true) {
            return Err(malformed(source, "the node is reached twice"));
        }
        positive_fractions[here] = *node
            .class_fractions
            .get(POSITIVE_CLASS)
            .ok_or_else(|| malformed(source, "the node has no positive-class fraction"))?;
        nodes[here] = match node.split_feature {
            None => N::leaf(here as u32),
            Some(feature) => {
                if feature as usize >= n_features {
                    return Err(malformed(
                        source,
                        "the split feature is not a model feature",
                    ));
                }
                let left = nodes.len();
                nodes.extend([N::sending_everything_right(); 2]);
                positive_fractions.extend([0.0; 2]);
                pending.push((node.right_child as usize, left + 1));
                pending.push((node.left_child as usize, left));
                split(feature, node.threshold).with_left(left as u32)
            }
        };
    }
    Ok(FlatTree {
        nodes,
        positive_fractions: PositiveFractions::Copied(positive_fractions),
    })
}

impl FlatTree<'_, RankedNode> {
    /// Renumbers the splits' bounds: `bounds[feature][bound - 1]` replaces each `bound` (a
    /// threshold's place in one table plus 1) by its bound in another. A bound of 0 (leaves, and
    /// splits that send every row right) stays.
    fn rebound(&mut self, bounds: &[Vec<u16>]) {
        for node in self.nodes.iter_mut().filter(|node| node.bound != 0) {
            node.bound = bounds[node.feature()][usize::from(node.bound) - 1];
        }
    }
}

impl<N: FlatNode> FlatTree<'_, N> {
    /// The leaves that `LANES` consecutive rows of `rows` (`n_features` wide, at least one)
    /// fall into, walked in lockstep: their steps are independent, so the CPU overlaps their
    /// loads, and branchless steps cannot be mispredicted; rows at a leaf stay there until the
    /// deepest row arrives.
    #[inline]
    fn lockstep_leaves(&self, rows: &[N::Value], n_features: usize) -> [usize; LANES] {
        let rows = &rows[..LANES * n_features];
        let mut index = [0usize; LANES];
        loop {
            let mut moved = false;
            for (lane, index) in index.iter_mut().enumerate() {
                let node = self.nodes[*index];
                let next = node.next(rows[lane * n_features + node.feature()]);
                moved |= next != *index;
                *index = next;
            }
            if !moved {
                return index;
            }
        }
    }

    /// The leaf `row` falls into, walked alone.
    #[inline]
    fn leaf_of(&self, row: &[N::Value]) -> usize {
        let mut index = 0;
        loop {
            let node = self.nodes[index];
            // Asked before reading a value: a model without features has none to read.
            if node.right() == index {
                return index;
            }
            index = node.next(row[node.feature()]);
        }
    }

    /// Rows that can walk in lockstep: a lockstep step reads a feature even at a leaf
    /// (feature 0), which a model without features does not have; its trees are single
    /// leaves, walked one row at a time.
    fn lockstep_rows(n_rows: usize, n_features: usize) -> usize {
        if n_features == 0 {
            0
        } else {
            n_rows / LANES * LANES
        }
    }

    /// Adds to `sums[i]` the positive-class fraction of the leaf that row `i` of `rows`
    /// (row-major, `n_features` wide) falls into.
    fn add_leaf_values(&self, rows: &[N::Value], n_features: usize, sums: &mut [f64]) {
        self.for_each_leaf(rows, n_features, sums.len(), |row, leaf| {
            sums[row] += self.positive_fractions.at(leaf);
        });
    }

    /// Calls `reached(i, leaf)`, `i` ascending, with the leaf each of the first `n_rows` rows of
    /// `rows` (row-major, `n_features` wide) falls into: `LANES` rows at a time in lockstep,
    /// the last ones (fewer than a lockstep group) one at a time.
    #[inline(always)]
    fn for_each_leaf(
        &self,
        rows: &[N::Value],
        n_features: usize,
        n_rows: usize,
        mut reached: impl FnMut(usize, usize),
    ) {
        let lockstep_rows = Self::lockstep_rows(n_rows, n_features);
        for first in (0..lockstep_rows).step_by(LANES) {
            let leaves = self.lockstep_leaves(&rows[first * n_features..], n_features);
            for (row, leaf) in (first..).zip(leaves) {
                reached(row, leaf);
            }
        }
        for row in lockstep_rows..n_rows {
            reached(row, self.leaf_of(&rows[row * n_features..][..n_features]));
        }
    }

    /// As [`FlatTree::add_leaf_values`] into `sums`, each leaf value also added to
    /// `out_of_bag_sums[i]` and counted in `counts[i]` when `in_bag[i]` is false: the one walk
    /// gives both a forest's predictions of its own training rows and its out-of-bag estimate.
    fn add_leaf_values_and_out_of_bag(
        &self,
        rows: &[N::Value],
        n_features: usize,
        in_bag: &[bool],
        sums: &mut [f64],
        out_of_bag_sums: &mut [f64],
        counts: &mut [usize],
    ) {
        self.for_each_leaf(rows, n_features, sums.len(), |row, leaf| {
            let value = self.positive_fractions.at(leaf);
            sums[row] += value;
            if !in_bag[row] {
                out_of_bag_sums[row] += value;
                counts[row] += 1;
            }
        });
    }

    /// Adds, along each row's path, each step's change in positive-class fraction (child minus
    /// parent) to the split feature's entry of that row of `per_feature` (row-major,
    /// `n_features` wide, one row per row of `rows`), root first, and the fraction of the leaf
    /// the path ends at to the row's entry of `sums`. `n_features` is at least 1.
    fn add_path_contributions(
        &self,
        rows: &[N::Value],
        n_features: usize,
        per_feature: &mut [f64],
        sums: &mut [f64],
    ) {
        match &self.positive_fractions {
            PositiveFractions::Copied(fractions) => self.add_path_contributions_with(
                |node| fractions[node],
                rows,
                n_features,
                per_feature,
                sums,
            ),
            in_stored_tree => self.add_path_contributions_with(
                |node| in_stored_tree.at(node),
                rows,
                n_features,
                per_feature,
                sums,
            ),
        }
    }

    /// [`FlatTree::add_path_contributions`], reading a node's positive-class fraction with
    /// `fraction`.
    #[inline(always)]
    fn add_path_contributions_with(
        &self,
        fraction: impl Fn(usize) -> f64,
        rows: &[N::Value],
        n_features: usize,
        per_feature: &mut [f64],
        sums: &mut [f64],
    ) {
        let n_rows = per_feature.len() / n_features;
        let lockstep_rows = n_rows / CONTRIBUTION_LANES * CONTRIBUTION_LANES;
        let (lockstep_out, other_out) = per_feature.split_at_mut(lockstep_rows * n_features);
        let (lockstep_sums, other_sums) = sums[..n_rows].split_at_mut(lockstep_rows);
        for (lanes, (out, sums)) in lockstep_out
            .chunks_exact_mut(CONTRIBUTION_LANES * n_features)
            .zip(lockstep_sums.chunks_exact_mut(CONTRIBUTION_LANES))
            .enumerate()
        {
            let rows =
                &rows[lanes * CONTRIBUTION_LANES * n_features..][..CONTRIBUTION_LANES * n_features];
            let mut index = [0usize; CONTRIBUTION_LANES];
            // As `lockstep_leaves`, adding each lane's steps as it takes them: a row's entries
            // still receive their additions in path order.
            loop {
                let mut moved = false;
                for (lane, index) in index.iter_mut().enumerate() {
                    let node = self.nodes[*index];
                    let feature = node.feature();
                    let next = node.next(rows[lane * n_features + feature]);
                    if next != *index {
                        out[lane * n_features + feature] += fraction(next) - fraction(*index);
                        moved = true;
                    }
                    *index = next;
                }
                if !moved {
                    break;
                }
            }
            for (sum, leaf) in sums.iter_mut().zip(index) {
                *sum += fraction(leaf);
            }
        }
        // The last rows, fewer than a lockstep group, one at a time.
        for (offset, (out_row, sum)) in other_out
            .chunks_exact_mut(n_features)
            .zip(other_sums)
            .enumerate()
        {
            let row = &rows[(lockstep_rows + offset) * n_features..][..n_features];
            let mut index = 0;
            let mut parent_fraction = fraction(0);
            loop {
                let node = self.nodes[index];
                if node.right() == index {
                    break;
                }
                let feature = node.feature();
                index = node.next(row[feature]);
                let child_fraction = fraction(index);
                out_row[feature] += child_fraction - parent_fraction;
                parent_fraction = child_fraction;
            }
            *sum += parent_fraction;
        }
    }
}
