//! One histogram CART tree: growth on binned features, and the stored tree (what the saved model
//! holds; prediction walks its compact copy, `flat.rs`).

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};

use super::ForestError;
use super::binning::BinnedFeatures;

/// One node of a fitted tree, as [`Tree::node`] shows it and [`Tree::push_node`] takes it.
/// Field names are part of the saved-model format: do not rename.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Node<'a> {
    /// Feature tested at this node; `None` for a leaf.
    pub split_feature: Option<u32>,
    /// Rows with `x[split_feature] <= threshold` go to `left_child`, all others (NaN included)
    /// to `right_child`. Meaningless for a leaf (0.0).
    pub threshold: f64,
    /// Index of the left child in its tree; 0 for a leaf (the root is never a child).
    pub left_child: u32,
    /// Index of the right child in its tree; 0 for a leaf.
    pub right_child: u32,
    /// Weighted class fractions of the training rows that reached this node (sums to 1); for a
    /// leaf this is the tree's predicted class distribution, as scikit-learn's `predict_proba`.
    pub class_fractions: &'a [f64],
    /// Distinct training rows (bootstrap draws collapsed into weights) that reached this node.
    pub n_rows: u32,
    /// Sum of the sample weights (bootstrap count × sample weight × class weight) at this node.
    pub weighted_n_rows: f64,
    /// Weighted Gini impurity at this node.
    pub impurity: f64,
}

/// `StoredNode::split_feature` of a leaf. An `Option<u32>` there would cost 8 bytes per node
/// (its tag pads the node to 48 bytes); no model has 2³² − 1 features.
const LEAF: u32 = u32::MAX;

/// A [`Node`] as its [`Tree`] holds it: 40 bytes and no heap allocation of its own (its class
/// fractions are in the tree's `class_fractions`). A 100-tree forest on two million customers
/// has tens of millions of nodes, so every byte here is tens of megabytes.
#[derive(Debug, Clone, Copy)]
struct StoredNode {
    /// [`LEAF`] for a leaf.
    split_feature: u32,
    threshold: f64,
    left_child: u32,
    right_child: u32,
    n_rows: u32,
    weighted_n_rows: f64,
    impurity: f64,
}

/// A fitted tree: nodes in creation order, root first.
///
/// Saved as `{"nodes": [node, …]}`, each node a [`Node`] with its field names. Held compactly:
/// 40 bytes per node plus 8 per class fraction, in two vectors ([`Tree::heap_bytes`]); a node
/// that owned its fractions took 72 bytes plus a heap allocation of 32, twice as much.
/// Equal trees are trees with equal nodes.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "SavedTree")]
pub struct Tree {
    /// Class fractions per node: node `i`'s are `class_fractions[i * n_classes..][..n_classes]`.
    n_classes: usize,
    nodes: Vec<StoredNode>,
    class_fractions: Vec<f64>,
}

impl Tree {
    /// An empty tree whose nodes will each have `n_classes` class fractions.
    pub fn new(n_classes: usize) -> Tree {
        Tree {
            n_classes,
            nodes: Vec::new(),
            class_fractions: Vec::new(),
        }
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `index` (the root is 0), or `None` past the last node.
    pub fn node(&self, index: usize) -> Option<Node<'_>> {
        self.nodes.get(index).map(|stored| self.view(index, stored))
    }

    /// The nodes in index order, root first.
    pub fn nodes(&self) -> impl ExactSizeIterator<Item = Node<'_>> {
        self.nodes
            .iter()
            .enumerate()
            .map(|(index, stored)| self.view(index, stored))
    }

    /// Appends `node` as node number `len()`, as when loading a saved tree node by node. Its
    /// class fractions must be as many as the tree's classes, and a split's feature below
    /// 2³² − 1 (which marks leaves in storage).
    pub fn push_node(&mut self, node: Node<'_>) -> Result<(), ForestError> {
        if node.class_fractions.len() != self.n_classes {
            return Err(ForestError::ClassFractionCountMismatch {
                node: self.nodes.len(),
                expected: self.n_classes,
                found: node.class_fractions.len(),
            });
        }
        if node.split_feature == Some(LEAF) {
            return Err(ForestError::SplitFeatureMarksLeaves {
                node: self.nodes.len(),
            });
        }
        self.class_fractions.extend_from_slice(node.class_fractions);
        self.nodes.push(StoredNode {
            split_feature: node.split_feature.unwrap_or(LEAF),
            threshold: node.threshold,
            left_child: node.left_child,
            right_child: node.right_child,
            n_rows: node.n_rows,
            weighted_n_rows: node.weighted_n_rows,
            impurity: node.impurity,
        });
        Ok(())
    }

    /// Gives back the spare capacity that growing node by node leaves (a vector doubles as it
    /// grows, so up to half of it can be spare). Call it once the last node is pushed.
    pub fn shrink_to_fit(&mut self) {
        self.nodes.shrink_to_fit();
        self.class_fractions.shrink_to_fit();
    }

    /// Bytes this tree holds on the heap: the capacities of its two vectors (the allocator's own
    /// overhead, two blocks per tree, is not counted).
    pub fn heap_bytes(&self) -> usize {
        self.nodes.capacity() * std::mem::size_of::<StoredNode>()
            + self.class_fractions.capacity() * std::mem::size_of::<f64>()
    }

    fn class_fractions_of(&self, index: usize) -> &[f64] {
        &self.class_fractions[index * self.n_classes..][..self.n_classes]
    }

    fn view(&self, index: usize, stored: &StoredNode) -> Node<'_> {
        Node {
            split_feature: (stored.split_feature != LEAF).then_some(stored.split_feature),
            threshold: stored.threshold,
            left_child: stored.left_child,
            right_child: stored.right_child,
            class_fractions: self.class_fractions_of(index),
            n_rows: stored.n_rows,
            weighted_n_rows: stored.weighted_n_rows,
            impurity: stored.impurity,
        }
    }

    /// Unnormalised impurity decrease per feature (scikit-learn's
    /// `compute_feature_importances` before the final normalisation).
    pub(super) fn impurity_decrease_per_feature(&self, n_features: usize) -> Vec<f64> {
        let mut decrease = vec![0.0; n_features];
        for node in self.nodes.iter().filter(|node| node.split_feature != LEAF) {
            let left = &self.nodes[node.left_child as usize];
            let right = &self.nodes[node.right_child as usize];
            decrease[node.split_feature as usize] += node.weighted_n_rows * node.impurity
                - left.weighted_n_rows * left.impurity
                - right.weighted_n_rows * right.impurity;
        }
        let root_weight = self.nodes[0].weighted_n_rows;
        if root_weight > 0.0 {
            decrease.iter_mut().for_each(|d| *d /= root_weight);
        }
        decrease
    }
}

impl PartialEq for Tree {
    fn eq(&self, other: &Tree) -> bool {
        self.nodes().eq(other.nodes())
    }
}

impl Serialize for Tree {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        /// The node list, written node by node from the compact storage.
        struct Nodes<'a>(&'a Tree);
        impl Serialize for Nodes<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_seq(self.0.nodes())
            }
        }
        let mut tree = serializer.serialize_struct("Tree", 1)?;
        tree.serialize_field("nodes", &Nodes(self))?;
        tree.end()
    }
}

/// A tree as the saved format writes it. Read whole, then stored compactly: one tree at a time
/// is ever held this way while a model loads.
#[derive(Deserialize)]
struct SavedTree {
    nodes: Vec<SavedNode>,
}

/// A [`Node`] as read, owning its class fractions.
#[derive(Deserialize)]
struct SavedNode {
    split_feature: Option<u32>,
    threshold: f64,
    left_child: u32,
    right_child: u32,
    class_fractions: Vec<f64>,
    n_rows: u32,
    weighted_n_rows: f64,
    impurity: f64,
}

impl TryFrom<SavedTree> for Tree {
    type Error = ForestError;

    /// The tree's class count is its first node's; every other node must have as many.
    fn try_from(saved: SavedTree) -> Result<Tree, ForestError> {
        let n_classes = saved
            .nodes
            .first()
            .map_or(0, |node| node.class_fractions.len());
        let mut tree = Tree {
            n_classes,
            nodes: Vec::with_capacity(saved.nodes.len()),
            class_fractions: Vec::with_capacity(saved.nodes.len() * n_classes),
        };
        for node in &saved.nodes {
            tree.push_node(Node {
                split_feature: node.split_feature,
                threshold: node.threshold,
                left_child: node.left_child,
                right_child: node.right_child,
                class_fractions: &node.class_fractions,
                n_rows: node.n_rows,
                weighted_n_rows: node.weighted_n_rows,
                impurity: node.impurity,
            })?;
        }
        Ok(tree)
    }
}

/// How many features each split examines, already resolved against the column count.
#[derive(Debug, Clone, Copy)]
pub(super) struct GrowSettings {
    pub(super) max_depth: Option<usize>,
    pub(super) min_samples_split: usize,
    pub(super) min_samples_leaf: usize,
    /// Non-constant features to examine per split (1..=n_features).
    pub(super) features_per_split: usize,
    pub(super) n_classes: usize,
}

/// Class weights and counts of one bin, or of a node side: `n_classes` weights then the row count
/// (a count stored as f64 is exact far beyond any row count we can hold).
struct Histogram {
    /// `stride = n_classes + 1` values per bin.
    cells: Vec<f64>,
    /// Bit `b` set when bin `b` holds at least one row: lets a scan or a reset visit only the
    /// occupied bins, which keeps deep nodes (few rows, 256 bins) cheap.
    occupied: [u64; 4],
}

impl Histogram {
    fn new(stride: usize) -> Self {
        Histogram {
            cells: vec![0.0; 256 * stride],
            occupied: [0; 4],
        }
    }

    fn occupied_bins(&self) -> impl Iterator<Item = usize> + '_ {
        self.occupied
            .iter()
            .enumerate()
            .flat_map(|(word_index, &word)| {
                let mut remaining = word;
                std::iter::from_fn(move || {
                    if remaining == 0 {
                        return None;
                    }
                    let bit = remaining.trailing_zeros() as usize;
                    remaining &= remaining - 1;
                    Some(word_index * 64 + bit)
                })
            })
    }

    fn clear(&mut self, stride: usize) {
        for word_index in 0..4 {
            let mut remaining = self.occupied[word_index];
            while remaining != 0 {
                let bin = word_index * 64 + remaining.trailing_zeros() as usize;
                remaining &= remaining - 1;
                self.cells[bin * stride..(bin + 1) * stride].fill(0.0);
            }
        }
        self.occupied = [0; 4];
    }
}

/// Per-tree training view: which rows are in the tree's sample and with what weight.
pub(super) struct TreeSample<'a> {
    pub(super) binned: &'a BinnedFeatures,
    pub(super) labels: &'a [usize],
    /// Weight of every training row in this tree; rows with weight 0 are left out entirely (as
    /// scikit-learn does), so they do not count towards `min_samples_leaf`.
    pub(super) weights: Vec<f64>,
}

/// One in-sample row as the grower sees it: its label and weight, next to (in `Grower::codes`)
/// its own copy of the row's bin codes.
#[derive(Debug, Clone, Copy)]
struct RowEntry {
    label: u32,
    weight: f64,
}

/// A node waiting to be grown: its rows are `rows[start..end]`.
struct PendingNode {
    node_index: usize,
    start: usize,
    end: usize,
    depth: usize,
    /// Weight per class of the node's rows (kept from the parent's pass over them).
    class_totals: Vec<f64>,
    /// Histograms of all features, present only when histogram subtraction is in use.
    histograms: Option<Vec<Histogram>>,
}

struct BestSplit {
    /// Sum over sides of Σ_c w_c² / W_side; maximising it minimises the weighted child Gini.
    score: f64,
    feature: usize,
    bin: usize,
}

impl BestSplit {
    /// Strictly better score wins; equal scores go to the lowest feature, then the lowest bin, so
    /// the tree does not depend on the order in which features were drawn.
    fn is_beaten_by(&self, score: f64, feature: usize, bin: usize) -> bool {
        score > self.score || (score == self.score && (feature, bin) < (self.feature, self.bin))
    }
}

struct Grower<'a> {
    sample: &'a TreeSample<'a>,
    settings: GrowSettings,
    stride: usize,
    n_features: usize,
    /// Subtraction pays only when every split looks at every feature: a sampled child would
    /// need histograms of features its parent never built.
    use_subtraction: bool,
    histogram_pool: Vec<Vec<Histogram>>,
    /// Histograms for the features drawn at one split (sampling mode).
    scratch_histograms: Vec<Histogram>,
    /// `0..n_features`, the feature list of subtraction mode.
    all_features: Vec<usize>,
    rows: Vec<RowEntry>,
    /// The bin codes of `rows[i]` at `codes[i * n_features..(i + 1) * n_features]`, partitioned
    /// with `rows`. A node's rows are scattered over the training matrix; reading their codes
    /// through the row index costs a cache miss per row once the binned matrix outgrows the
    /// cache (1.69M training customers × 30 features = 51 MB at 100M transactions, against a
    /// 32 MB L3), which made a tree's growth 26× slower for 10× the rows. Moving the codes with
    /// the rows keeps every histogram pass and partition a sequential read.
    codes: Vec<u8>,
    partition_scratch: Vec<RowEntry>,
    codes_scratch: Vec<u8>,
    feature_order: Vec<usize>,
    tree: Tree,
}

/// Grows one tree on the rows with a positive weight in `sample`.
pub(super) fn grow_tree(
    sample: &TreeSample<'_>,
    settings: GrowSettings,
    rng: &mut ChaCha8Rng,
) -> Tree {
    let n_features = sample.binned.upper_edges.len();
    let stride = settings.n_classes + 1;
    let mut rows = Vec::new();
    let mut codes = Vec::new();
    for (row, &weight) in sample.weights.iter().enumerate() {
        if weight > 0.0 {
            rows.push(RowEntry {
                label: sample.labels[row] as u32,
                weight,
            });
            codes.extend_from_slice(sample.binned.row(row));
        }
    }
    let mut grower = Grower {
        sample,
        settings,
        stride,
        n_features,
        use_subtraction: settings.features_per_split == n_features,
        histogram_pool: Vec::new(),
        scratch_histograms: (0..n_features).map(|_| Histogram::new(stride)).collect(),
        all_features: (0..n_features).collect(),
        partition_scratch: Vec::with_capacity(rows.len()),
        codes_scratch: Vec::with_capacity(codes.len()),
        rows,
        codes,
        feature_order: (0..n_features).collect(),
        tree: Tree::new(settings.n_classes),
    };
    grower.grow(rng);
    let mut tree = grower.tree;
    tree.shrink_to_fit();
    tree
}

impl Grower<'_> {
    fn grow(&mut self, rng: &mut ChaCha8Rng) {
        let root_rows = self.rows.len();
        let root_histograms = self
            .use_subtraction
            .then(|| self.build_all_histograms(0, root_rows));
        let class_totals = self.push_leaf(0, root_rows);
        let mut stack = vec![PendingNode {
            node_index: 0,
            start: 0,
            end: root_rows,
            depth: 0,
            class_totals,
            histograms: root_histograms,
        }];
        while let Some(pending) = stack.pop() {
            let children = self.split_node(pending, rng);
            // Right pushed first so the left child is grown first: depth-first, left to right.
            if let Some((left, right)) = children {
                stack.push(right);
                stack.push(left);
            }
        }
    }

    fn class_weights(&self, start: usize, end: usize) -> (Vec<f64>, f64) {
        let mut per_class = vec![0.0; self.settings.n_classes];
        for entry in &self.rows[start..end] {
            per_class[entry.label as usize] += entry.weight;
        }
        let total = per_class.iter().sum();
        (per_class, total)
    }

    /// Appends a leaf for `rows[start..end]` to the tree (split later if it qualifies) and
    /// returns its per-class weights.
    fn push_leaf(&mut self, start: usize, end: usize) -> Vec<f64> {
        let (per_class, total) = self.class_weights(start, end);
        let first_fraction = self.tree.class_fractions.len();
        self.tree.class_fractions.extend(
            per_class
                .iter()
                .map(|w| if total > 0.0 { w / total } else { 0.0 }),
        );
        let impurity = 1.0
            - self.tree.class_fractions[first_fraction..]
                .iter()
                .map(|p| p * p)
                .sum::<f64>();
        self.tree.nodes.push(StoredNode {
            split_feature: LEAF,
            threshold: 0.0,
            left_child: 0,
            right_child: 0,
            n_rows: (end - start) as u32,
            weighted_n_rows: total,
            impurity,
        });
        per_class
    }

    fn take_histograms(&mut self) -> Vec<Histogram> {
        self.histogram_pool.pop().unwrap_or_else(|| {
            (0..self.n_features)
                .map(|_| Histogram::new(self.stride))
                .collect()
        })
    }

    fn recycle_histograms(&mut self, mut histograms: Vec<Histogram>) {
        for histogram in &mut histograms {
            histogram.clear(self.stride);
        }
        self.histogram_pool.push(histograms);
    }

    /// One pass over `rows` adds every row to the histogram of each feature in `features`
    /// (`histograms[i]` belongs to `features[i]`); `codes` are the rows' codes, `n_features` a
    /// row, one row after another.
    fn fill_histograms(
        histograms: &mut [Histogram],
        features: &[usize],
        rows: &[RowEntry],
        codes: &[u8],
        n_features: usize,
        stride: usize,
    ) {
        for (entry, codes) in rows.iter().zip(codes.chunks_exact(n_features)) {
            for (histogram, &feature) in histograms.iter_mut().zip(features) {
                let bin = usize::from(codes[feature]);
                let cell = bin * stride;
                histogram.cells[cell + entry.label as usize] += entry.weight;
                histogram.cells[cell + stride - 1] += 1.0;
                histogram.occupied[bin >> 6] |= 1 << (bin & 63);
            }
        }
    }

    fn build_all_histograms(&mut self, start: usize, end: usize) -> Vec<Histogram> {
        let mut histograms = self.take_histograms();
        Self::fill_histograms(
            &mut histograms,
            &self.all_features,
            &self.rows[start..end],
            &self.codes[start * self.n_features..end * self.n_features],
            self.n_features,
            self.stride,
        );
        histograms
    }

    /// `parent - child`, bin by bin, into a fresh set. Occupancy follows the exact row counts, so
    /// rounding residue in the weights can never resurrect an empty bin.
    fn subtract_histograms(&mut self, parent: &[Histogram], child: &[Histogram]) -> Vec<Histogram> {
        let stride = self.stride;
        let mut sibling = self.take_histograms();
        for ((out, parent), child) in sibling.iter_mut().zip(parent).zip(child) {
            for bin in parent.occupied_bins() {
                let cells = bin * stride..(bin + 1) * stride;
                let count = parent.cells[cells.end - 1] - child.cells[cells.end - 1];
                if count > 0.0 {
                    for cell in cells {
                        out.cells[cell] = parent.cells[cell] - child.cells[cell];
                    }
                    out.occupied[bin >> 6] |= 1 << (bin & 63);
                }
            }
        }
        sibling
    }

    /// Best split of one feature's histogram, folded into `best`. Returns false when the feature
    /// is constant in the node (one occupied bin), so the caller can draw another feature.
    fn scan_histogram(
        histogram: &Histogram,
        feature: usize,
        totals: &[f64],
        n_rows: usize,
        settings: &GrowSettings,
        stride: usize,
        best: &mut Option<BestSplit>,
    ) -> bool {
        let n_classes = settings.n_classes;
        let mut left = vec![0.0; n_classes];
        let mut left_rows = 0usize;
        let mut bins = histogram.occupied_bins().peekable();
        let mut is_constant = true;
        let total_weight: f64 = totals.iter().sum();
        while let Some(bin) = bins.next() {
            if bins.peek().is_none() {
                break; // nothing to the right of the last occupied bin
            }
            is_constant = false;
            let cells = &histogram.cells[bin * stride..(bin + 1) * stride];
            for class in 0..n_classes {
                left[class] += cells[class];
            }
            left_rows += cells[stride - 1] as usize;
            let right_rows = n_rows - left_rows;
            if left_rows < settings.min_samples_leaf || right_rows < settings.min_samples_leaf {
                continue;
            }
            let left_weight: f64 = left.iter().sum();
            let right_weight: f64 = total_weight - left_weight;
            let mut score = 0.0;
            if left_weight > 0.0 {
                score += left.iter().map(|w| w * w).sum::<f64>() / left_weight;
            }
            if right_weight > 0.0 {
                let right_sq: f64 = totals
                    .iter()
                    .zip(&left)
                    .map(|(t, l)| (t - l) * (t - l))
                    .sum();
                score += right_sq / right_weight;
            }
            let better = match best {
                None => true,
                Some(current) => current.is_beaten_by(score, feature, bin),
            };
            if better {
                *best = Some(BestSplit {
                    score,
                    feature,
                    bin,
                });
            }
        }
        !is_constant
    }

    /// Whether a node may be split at all: sklearn's leaf rules (pure, too few rows for a split
    /// or for two leaves, depth limit).
    fn could_split(&self, node_index: usize, n_rows: usize, depth: usize) -> bool {
        let settings = &self.settings;
        let is_pure = self
            .tree
            .class_fractions_of(node_index)
            .iter()
            .filter(|&&p| p > 0.0)
            .count()
            <= 1;
        !(is_pure
            || n_rows < settings.min_samples_split
            || n_rows < 2 * settings.min_samples_leaf
            || settings
                .max_depth
                .is_some_and(|max_depth| depth >= max_depth))
    }

    /// Finds and applies the best split of `pending`, or leaves it a leaf.
    fn split_node(
        &mut self,
        pending: PendingNode,
        rng: &mut ChaCha8Rng,
    ) -> Option<(PendingNode, PendingNode)> {
        let PendingNode {
            node_index,
            start,
            end,
            depth,
            class_totals: totals,
            histograms,
        } = pending;
        let n_rows = end - start;
        let settings = self.settings;
        if !self.could_split(node_index, n_rows, depth) {
            if let Some(histograms) = histograms {
                self.recycle_histograms(histograms);
            }
            return None;
        }

        let mut best: Option<BestSplit> = None;
        if let Some(histograms) = &histograms {
            for (feature, histogram) in histograms.iter().enumerate() {
                Self::scan_histogram(
                    histogram,
                    feature,
                    &totals,
                    n_rows,
                    &settings,
                    self.stride,
                    &mut best,
                );
            }
        } else {
            // Draw features without replacement until `features_per_split` non-constant ones
            // have been examined (constant ones do not count, as in scikit-learn), or all are
            // exhausted: partial Fisher-Yates on a per-tree permutation buffer. Drawing the
            // still-missing count as one batch and building the batch in one pass over the rows
            // examines exactly the features a one-at-a-time draw would.
            let mut examined_non_constant = 0;
            let mut drawn = 0;
            while drawn < self.n_features && examined_non_constant < settings.features_per_split {
                let batch_start = drawn;
                let batch_end = (drawn + settings.features_per_split - examined_non_constant)
                    .min(self.n_features);
                for slot in batch_start..batch_end {
                    let pick = rng.random_range(slot..self.n_features);
                    self.feature_order.swap(slot, pick);
                }
                drawn = batch_end;
                let batch = &self.feature_order[batch_start..batch_end];
                let histograms = &mut self.scratch_histograms[..batch.len()];
                Self::fill_histograms(
                    histograms,
                    batch,
                    &self.rows[start..end],
                    &self.codes[start * self.n_features..end * self.n_features],
                    self.n_features,
                    self.stride,
                );
                for (histogram, &feature) in histograms.iter_mut().zip(batch) {
                    if Self::scan_histogram(
                        histogram,
                        feature,
                        &totals,
                        n_rows,
                        &settings,
                        self.stride,
                        &mut best,
                    ) {
                        examined_non_constant += 1;
                    }
                    histogram.clear(self.stride);
                }
            }
        }

        let Some(best) = best else {
            if let Some(histograms) = histograms {
                self.recycle_histograms(histograms);
            }
            return None;
        };

        // Stable partition, codes moved with their rows: left rows keep their order, then right
        // rows keep theirs.
        let n_features = self.n_features;
        self.partition_scratch.clear();
        self.codes_scratch.clear();
        let mut write = start;
        for read in start..end {
            let row = self.rows[read];
            let codes_at = read * n_features;
            if usize::from(self.codes[codes_at + best.feature]) <= best.bin {
                if write != read {
                    self.rows[write] = row;
                    self.codes
                        .copy_within(codes_at..codes_at + n_features, write * n_features);
                }
                write += 1;
            } else {
                self.partition_scratch.push(row);
                self.codes_scratch
                    .extend_from_slice(&self.codes[codes_at..codes_at + n_features]);
            }
        }
        self.rows[write..end].copy_from_slice(&self.partition_scratch);
        self.codes[write * n_features..end * n_features].copy_from_slice(&self.codes_scratch);
        let middle = write;

        let left_index = self.tree.len();
        let left_totals = self.push_leaf(start, middle);
        let right_totals = self.push_leaf(middle, end);
        let threshold = self.sample.binned.threshold(best.feature, best.bin as u8);
        let node = &mut self.tree.nodes[node_index];
        node.split_feature = best.feature as u32;
        node.threshold = threshold;
        node.left_child = left_index as u32;
        node.right_child = (left_index + 1) as u32;

        let (left_histograms, right_histograms) = match histograms {
            None => (None, None),
            Some(parent) => {
                // Build the smaller child from its rows and derive the larger one from the
                // parent; a child that will be a leaf anyway needs no histograms, and when only
                // the smaller child can split, building it directly is the cheapest.
                let left_is_smaller = middle - start <= end - middle;
                let (small_range, large_range) = if left_is_smaller {
                    ((start, middle), (middle, end))
                } else {
                    ((middle, end), (start, middle))
                };
                let small_index = if left_is_smaller {
                    left_index
                } else {
                    left_index + 1
                };
                let large_index = if left_is_smaller {
                    left_index + 1
                } else {
                    left_index
                };
                let small_splits =
                    self.could_split(small_index, small_range.1 - small_range.0, depth + 1);
                let large_splits =
                    self.could_split(large_index, large_range.1 - large_range.0, depth + 1);
                let small = (small_splits || large_splits)
                    .then(|| self.build_all_histograms(small_range.0, small_range.1));
                let large = match (&small, large_splits) {
                    (Some(small), true) => Some(self.subtract_histograms(&parent, small)),
                    _ => None,
                };
                self.recycle_histograms(parent);
                let small = match small {
                    Some(histograms) if !small_splits => {
                        self.recycle_histograms(histograms);
                        None
                    }
                    other => other,
                };
                if left_is_smaller {
                    (small, large)
                } else {
                    (large, small)
                }
            }
        };
        Some((
            PendingNode {
                node_index: left_index,
                start,
                end: middle,
                depth: depth + 1,
                class_totals: left_totals,
                histograms: left_histograms,
            },
            PendingNode {
                node_index: left_index + 1,
                start: middle,
                end,
                depth: depth + 1,
                class_totals: right_totals,
                histograms: right_histograms,
            },
        ))
    }
}
