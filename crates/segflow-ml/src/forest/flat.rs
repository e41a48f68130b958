//! The prediction layout of a fitted tree.
//!
//! A [`Tree`] stores what the saved-model format holds: 40-byte nodes in creation order, their
//! class fractions in a parallel array. Walking it drags training-only fields (row counts,
//! impurity) through the cache and asks at every step whether the node is a leaf. Prediction
//! walks a [`FlatTree`] instead, built from the `Tree` when a prediction starts:
//! - 16-byte nodes (threshold, feature, right child), four to a cache line;
//! - depth-first pre-order, so a left child is the very next node (often the same cache line)
//!   and a right child is the only index stored;
//! - a leaf is its own right child behind a NaN threshold, so a row that reaches it stays
//!   there whatever its values: [`FlatTree::add_leaf_values`] walks several rows in lockstep,
//!   branch-free, without asking at every step which of them are done;
//! - the positive-class fractions of all nodes (leaves for predictions, inner nodes too for
//!   contributions) in a parallel array.
//!
//! Building one is a single pass over the nodes (for 100 full-depth trees, under a tenth of the
//! work of then predicting 5.6k rows), so it is not kept with the model: its 24 bytes per node
//! (16 + 8) add to the stored tree's 56 only while a prediction walks it, and a prediction lays
//! out a group of trees at a time (`forest.rs`, about 100 MB), where a kept copy would hold them
//! as long as the model lives (a gigabyte for a 44M-node forest), and a loaded or edited model
//! can never predict with a stale layout.
//!
//! Results are bit-identical to walking the `Tree`: the same comparisons (`x <= threshold` goes
//! left, so NaN goes right) reach the same leaves, whose stored fractions are copied exactly.

use super::{ForestError, POSITIVE_CLASS, Tree};

/// Rows walked through a tree in lockstep by [`FlatTree::add_leaf_values`]. Measured on 100
/// full-depth trees (mean leaf depth 13): 8 beats 4 (less overlap) and 16 (a group waits for its
/// deepest row), each by about a fifth. Lockstep executes more instructions than walking one row
/// at a time (lanes idle at their leaf, no early exit), yet runs 2-3× faster: a lone walk is a
/// chain of dependent loads and, when it branches, mispredicts about every other step.
const LANES: usize = 8;

/// One node of a [`FlatTree`].
#[derive(Debug, Clone, Copy)]
struct FlatNode {
    /// Split: rows with `x[feature] <= value` go left (the next node), all others (NaN
    /// included) to `right`. Leaf: NaN.
    value: f64,
    /// Feature tested; 0 for a leaf.
    feature: u32,
    /// Index of the right child. A leaf is its own right child: with a NaN threshold every row
    /// "goes right" and stays put, so a walk can take steps without asking whether it is done.
    right: u32,
}

/// A fitted tree laid out for prediction (see the module docs).
#[derive(Debug, Clone)]
pub(super) struct FlatTree {
    nodes: Vec<FlatNode>,
    /// Positive-class fraction of every node, indexed like `nodes`.
    positive_fractions: Vec<f64>,
}

impl FlatTree {
    /// Lays out tree number `tree_index` (named in errors) of a model fitted on `n_features`
    /// features. Refuses what would make a walk panic or never end: a node without a
    /// positive-class fraction, a child index outside the tree, a node reached twice (a cycle or
    /// a shared subtree), or a split on a feature the model does not have.
    pub(super) fn new(
        tree: &Tree,
        tree_index: usize,
        n_features: usize,
    ) -> Result<FlatTree, ForestError> {
        let malformed = |node: usize, problem: &'static str| ForestError::MalformedTree {
            tree: tree_index,
            node,
            problem,
        };
        if tree.is_empty() {
            return Err(malformed(0, "the tree has no nodes"));
        }
        let mut nodes = Vec::with_capacity(tree.len());
        let mut positive_fractions = Vec::with_capacity(tree.len());
        let mut reached = vec![false; tree.len()];
        // (node in `tree`, flat index of the parent whose right child it is). Popping the left
        // child right after its parent is what makes the order pre-order.
        let mut pending: Vec<(usize, Option<usize>)> = vec![(0, None)];
        while let Some((source, right_of)) = pending.pop() {
            let node = tree
                .node(source)
                .ok_or_else(|| malformed(source, "a child index points outside the tree"))?;
            if std::mem::replace(&mut reached[source], true) {
                return Err(malformed(source, "the node is reached twice"));
            }
            let here = nodes.len();
            if let Some(parent) = right_of {
                nodes[parent] = FlatNode {
                    right: here as u32,
                    ..nodes[parent]
                };
            }
            let positive_fraction = *node
                .class_fractions
                .get(POSITIVE_CLASS)
                .ok_or_else(|| malformed(source, "the node has no positive-class fraction"))?;
            positive_fractions.push(positive_fraction);
            match node.split_feature {
                None => nodes.push(FlatNode {
                    value: f64::NAN,
                    feature: 0,
                    right: here as u32,
                }),
                Some(feature) => {
                    if feature as usize >= n_features {
                        return Err(malformed(
                            source,
                            "the split feature is not a model feature",
                        ));
                    }
                    nodes.push(FlatNode {
                        value: node.threshold,
                        feature,
                        right: 0, // set when the right child is placed
                    });
                    pending.push((node.right_child as usize, Some(here)));
                    pending.push((node.left_child as usize, None));
                }
            }
        }
        Ok(FlatTree {
            nodes,
            positive_fractions,
        })
    }

    /// Positive-class fraction of the root: the tree's prediction before any split.
    pub(super) fn root_positive_fraction(&self) -> f64 {
        self.positive_fractions[0]
    }

    /// Adds to `sums[i]` the positive-class fraction of the leaf that row `i` of `rows`
    /// (row-major, `n_features` wide) falls into.
    pub(super) fn add_leaf_values(&self, rows: &[f64], n_features: usize, sums: &mut [f64]) {
        // A lockstep step reads a feature even at a leaf (feature 0), which a model without
        // features does not have; its trees are single leaves, walked one row at a time.
        let lockstep_rows = if n_features == 0 {
            0
        } else {
            sums.len() / LANES * LANES
        };
        let (lockstep_sums, other_sums) = sums.split_at_mut(lockstep_rows);
        for (group, sums) in lockstep_sums.chunks_exact_mut(LANES).enumerate() {
            let rows = &rows[group * LANES * n_features..][..LANES * n_features];
            let mut index = [0usize; LANES];
            // Lockstep over LANES rows: their steps are independent, so the CPU overlaps their
            // loads, and branchless steps cannot be mispredicted; rows at a leaf stay there
            // until the deepest row arrives.
            loop {
                let mut moved = false;
                for (lane, index) in index.iter_mut().enumerate() {
                    let node = self.nodes[*index];
                    let next = std::hint::select_unpredictable(
                        rows[lane * n_features + node.feature as usize] <= node.value,
                        *index + 1,
                        node.right as usize,
                    );
                    moved |= next != *index;
                    *index = next;
                }
                if !moved {
                    break;
                }
            }
            for (sum, &leaf) in sums.iter_mut().zip(&index) {
                *sum += self.positive_fractions[leaf];
            }
        }
        for (offset, sum) in other_sums.iter_mut().enumerate() {
            *sum += self.leaf_value(&rows[(lockstep_rows + offset) * n_features..][..n_features]);
        }
    }

    /// Positive-class fraction of the leaf `row` (raw feature values) falls into.
    #[inline]
    pub(super) fn leaf_value(&self, row: &[f64]) -> f64 {
        let mut index = 0;
        loop {
            let node = self.nodes[index];
            if node.right as usize == index {
                return self.positive_fractions[index];
            }
            index = if row[node.feature as usize] <= node.value {
                index + 1
            } else {
                node.right as usize
            };
        }
    }

    /// Adds, along `row`'s path, each step's change in positive-class fraction (child minus
    /// parent) to the split feature's entry of `per_feature`, root first.
    #[inline]
    pub(super) fn add_path_contributions(&self, row: &[f64], per_feature: &mut [f64]) {
        let mut index = 0;
        let mut parent_fraction = self.positive_fractions[0];
        loop {
            let node = self.nodes[index];
            if node.right as usize == index {
                return;
            }
            let feature = node.feature as usize;
            index = if row[feature] <= node.value {
                index + 1
            } else {
                node.right as usize
            };
            let child_fraction = self.positive_fractions[index];
            per_feature[feature] += child_fraction - parent_fraction;
            parent_fraction = child_fraction;
        }
    }
}
