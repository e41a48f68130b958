//! The saved churn model and what scoring a customer means: a probability, a risk decile, a
//! decision at the model's threshold, and the features that moved the probability most.
//!
//! A run of stage `S` on run date `D` commits `<output_root>/models/S/run_date=D/` with
//! - `model.json`: [`ChurnModel`], format `segflow.churn_model` version 1 — the fitted
//!   preparation (imputation and one-hot levels, learnt on the training split only), the
//!   decision threshold and how it was chosen, how the label was defined, the forest's shape
//!   and impurity importances. Plain JSON, floats in their shortest exact form.
//! - `trees.parquet`: every node of every tree, one row each ([`TREE_COLUMNS`]): a 200-tree
//!   forest has hundreds of thousands of nodes, 50 MB as JSON, a few MB as zstd Parquet, and
//!   readable by any Parquet reader.
//!
//! No timestamps: the same input and seed give the same bytes, and a loaded model scores
//! exactly as the run did (floats are stored bit for bit). `segflow score` applies it.

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanBuilder, Float64Array, Float64Builder, Int32Array, RecordBatch, StringBuilder, UInt32Builder};
use datafusion::arrow::datatypes::{DataType, Field, Float64Type, Schema, SchemaRef, UInt32Type};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_writer::{ArrowColumnChunk, compute_leaves};
use rayon::prelude::*;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use ndarray::ArrayView2;
use serde::{Deserialize, Serialize};

use segflow_ml::forest::{ContributionLayout, Contributions, Node, RandomForest, Tree};
use segflow_ml::metrics::DECILES;
use segflow_ml::prep::{FeatureColumn, PrepError, Preparation};

use crate::sink::FileContent;

pub const MODEL_FILE: &str = "model.json";
pub const TREES_FILE: &str = "trees.parquet";
/// The columns of `trees.parquet`, one row per node, in tree then node order.
pub const TREE_COLUMNS: &[&str] = &["tree", "node", "split_feature", "threshold", "left_child", "right_child", "churn_fraction", "rows", "weighted_rows", "impurity"];
pub const FORMAT: &str = "segflow.churn_model";
pub const FORMAT_VERSION: u32 = 1;

/// How the decision threshold was chosen, as saved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "policy", rename_all = "snake_case", deny_unknown_fields)]
pub enum ThresholdRecord {
    Fixed { value: f64 },
    MaxF1 { chosen_on: String },
    TargetRecall { recall: f64, chosen_on: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChurnModel {
    pub format: String,
    pub format_version: u32,
    pub stage: String,
    pub run_id: String,
    pub run_date: String,
    /// The customer id column new data must have.
    pub id_column: String,
    /// What "churned" meant when the model was trained, in words.
    pub label: String,
    pub preparation: Preparation,
    /// The prepared column each forest feature index reads (one-hot columns as `name=level`).
    pub prepared_features: Vec<String>,
    pub forest: ForestSummary,
    /// The fitted forest; its trees live in `trees.parquet`.
    #[serde(skip, default = "empty_forest")]
    pub fitted: RandomForest,
    /// A customer is predicted to churn when its probability is at least this.
    pub threshold: f64,
    pub threshold_policy: ThresholdRecord,
    /// How many contributing features each score names.
    pub explain: usize,
    pub training_customers: u64,
    pub training_churn_rate: f64,
}

/// What `model.json` says about the forest whose nodes are in `trees.parquet`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForestSummary {
    pub trees_file: String,
    pub n_features: usize,
    pub n_trees: usize,
    pub n_nodes: usize,
    /// Normalised impurity importances per prepared column (sum 1).
    pub feature_importances: Vec<f64>,
}

fn empty_forest() -> RandomForest {
    RandomForest { n_features: 0, n_classes: 2, trees: Vec::new(), feature_importances: Vec::new(), oob_accuracy: None, oob_probabilities: None, training_probabilities: None, bin_edges: None }
}

impl ForestSummary {
    pub fn of(forest: &RandomForest) -> Self {
        ForestSummary {
            trees_file: TREES_FILE.to_string(),
            n_features: forest.n_features,
            n_trees: forest.trees.len(),
            n_nodes: forest.trees.iter().map(|t| t.len()).sum(),
            feature_importances: forest.feature_importances.clone(),
        }
    }
}

impl ChurnModel {
    /// The model's files, as a run commits them: `model.json` and `trees.parquet`. The trees
    /// are written straight to `scratch_file` when given (the run's scratch folder), not built
    /// in memory: 700 MB for a forest fitted on 1.7M customers.
    pub fn to_files(&self, scratch_file: Option<&Path>) -> Result<Vec<(String, FileContent)>, String> {
        let mut json = serde_json::to_vec_pretty(self).map_err(|e| format!("cannot write the churn model: {e}"))?;
        json.push(b'\n');
        let trees = match scratch_file {
            Some(path) => {
                let cannot = |e: std::io::Error| format!("cannot write the trees to {}: {e}", path.display());
                let file = std::fs::File::create(path).map_err(cannot)?;
                let mut file = write_trees(&self.fitted.trees, std::io::BufWriter::new(file))?;
                std::io::Write::flush(&mut file).map_err(cannot)?;
                FileContent::Written(path.to_path_buf())
            }
            None => FileContent::Bytes(write_trees(&self.fitted.trees, Vec::new())?),
        };
        Ok(vec![(MODEL_FILE.to_string(), json.into()), (TREES_FILE.to_string(), trees)])
    }

    /// Reads and checks a saved model (its folder or its `model.json`); the message names the
    /// file and what is wrong.
    pub fn load(path: &Path) -> Result<ChurnModel, String> {
        let file = if path.is_dir() { path.join(MODEL_FILE) } else { path.to_path_buf() };
        let shown = file.display();
        let bytes = std::fs::read(&file).map_err(|e| format!("cannot read the churn model {shown}: {e}"))?;
        let text = String::from_utf8(bytes).map_err(|_| format!("{shown}: not a churn model (a binary file, not the model's JSON)"))?;
        // The format is checked before the rest, so a file of another kind is named as such.
        let header: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{shown}: not a JSON model file: {e}"))?;
        let format = header.get("format").and_then(|f| f.as_str()).unwrap_or("");
        if format != FORMAT {
            return Err(format!("{shown}: not a churn model (format `{format}`, expected `{FORMAT}`)"));
        }
        let version = header.get("format_version").and_then(|v| v.as_u64()).unwrap_or(0);
        if version != u64::from(FORMAT_VERSION) {
            return Err(format!("{shown}: churn model format version {version}; this segflow reads version {FORMAT_VERSION}"));
        }
        let mut model: ChurnModel = serde_json::from_str(&text).map_err(|e| format!("{shown}: {e}"))?;
        let trees_path = file.with_file_name(&model.forest.trees_file);
        let trees = read_trees(&trees_path).map_err(|e| format!("{}: {e}", trees_path.display()))?;
        model.fitted = RandomForest {
            n_features: model.forest.n_features,
            n_classes: 2,
            trees,
            feature_importances: model.forest.feature_importances.clone(),
            oob_accuracy: None,
            oob_probabilities: None,
            training_probabilities: None,
            bin_edges: None,
        };
        model.check().map_err(|e| format!("{shown}: {e}"))?;
        Ok(model)
    }

    fn check(&self) -> Result<(), String> {
        let width = self.preparation.output_names().len();
        if self.prepared_features.len() != width || self.forest.n_features != width {
            return Err(format!(
                "the preparation makes {width} columns, but the model lists {} and its forest reads {}",
                self.prepared_features.len(),
                self.forest.n_features
            ));
        }
        let nodes: usize = self.fitted.trees.iter().map(|t| t.len()).sum();
        if self.fitted.trees.len() != self.forest.n_trees || nodes != self.forest.n_nodes || self.forest.n_trees == 0 {
            return Err(format!(
                "model.json describes {} trees of {} nodes in all, but {} holds {} trees of {nodes} nodes",
                self.forest.n_trees,
                self.forest.n_nodes,
                self.forest.trees_file,
                self.fitted.trees.len()
            ));
        }
        // Every split reads a column the preparation makes and points at nodes of its tree,
        // further down (so prediction cannot loop or index out of bounds).
        for (t, tree) in self.fitted.trees.iter().enumerate() {
            for (i, node) in tree.nodes().enumerate() {
                if let Some(feature) = node.split_feature {
                    let (left, right) = (node.left_child as usize, node.right_child as usize);
                    if feature as usize >= width || left <= i || right <= i || left >= tree.len() || right >= tree.len() {
                        return Err(format!("tree {t}, node {i}: a split on column {feature} to nodes {left} and {right} is not a valid tree"));
                    }
                }
                if node.class_fractions.len() != 2 || !node.class_fractions.iter().all(|f| (0.0..=1.0).contains(f)) {
                    return Err(format!("tree {t}, node {i}: class fractions {:?} are not two probabilities", node.class_fractions));
                }
            }
        }
        if !(0.0..=1.0).contains(&self.threshold) {
            return Err(format!("threshold {} is not a probability", self.threshold));
        }
        Ok(())
    }

    /// The model ready to score a table block after block ([`ChurnScorer`]), its forest laid
    /// out once and its stored trees dropped: call it once the model's files are written.
    pub fn into_scorer(mut self) -> Result<ChurnScorer, String> {
        let forest = std::mem::replace(&mut self.fitted, empty_forest());
        let layout = forest.into_contribution_layout().map_err(|e| e.to_string())?;
        Ok(ChurnScorer { model: self, layout })
    }

    /// Scores prepared rows: probability, decision and explanation for each. Risk deciles rank
    /// a whole table, so [`ScoresTable`] gives them once every block is in.
    ///
    /// Holds a rows × prepared-columns contribution matrix while it runs: callers score a
    /// table a block of rows at a time ([`SCORE_BLOCK_ROWS`]).
    pub fn score(&self, x: ArrayView2<'_, f64>) -> Result<Vec<Score<'_>>, String> {
        // One walk of the forest gives both: the contribution walks end at the leaves a
        // prediction reads (scoring the 10M demo's 238k customers: 1.7 s instead of 3.0).
        let contributions = self.fitted.contributions(x).map_err(|e| e.to_string())?;
        Ok(self.scores_of(&contributions))
    }

    /// Probability, decision and explanation of each row `contributions` holds.
    fn scores_of(&self, contributions: &Contributions) -> Vec<Score<'_>> {
        let probabilities = &contributions.probabilities;
        let groups = feature_groups(&self.preparation);
        let names: Vec<&str> = self.preparation.features().iter().map(|f| f.name()).collect();
        let mut per_feature = vec![0.0; names.len()];
        (0..probabilities.len())
            .map(|row| {
                per_feature.fill(0.0);
                for (column, &feature) in groups.iter().enumerate() {
                    per_feature[feature] += contributions.per_feature[[row, column]];
                }
                Score {
                    probability: probabilities[row],
                    predicted: probabilities[row] >= self.threshold,
                    top: top_contributions(&per_feature, self.explain).into_iter().map(|(f, c)| (names[f], c)).collect(),
                }
            })
            .collect()
    }
}

/// A [`ChurnModel`] ready to score a table block after block: its forest laid out once for the
/// contribution walks ([`ContributionLayout`]), its stored trees gone. Scoring through
/// [`ChurnModel::score`] lays the forest out on every call, beside the stored trees: at 100M
/// transaction lines, ten layouts of 44M nodes for the ten blocks of the score table, beside
/// 2.45 GB that scoring never reads (0.7 GB laid out).
#[derive(Debug)]
pub struct ChurnScorer {
    model: ChurnModel,
    layout: ContributionLayout,
}

impl ChurnScorer {
    /// The model as saved, without its trees (`fitted` is empty).
    pub fn model(&self) -> &ChurnModel {
        &self.model
    }

    /// Prepares one block of a table's customers (`columns`, the table's rows `first_row..`)
    /// with the model's own preparation and scores it: what the churn stage and `segflow
    /// score` do with each block they read. The same scores, bit for bit, as
    /// [`ChurnModel::score`] of the prepared rows.
    pub fn score_block(&self, columns: &[FeatureColumn<'_>], first_row: usize) -> Result<Vec<Score<'_>>, BlockScoreError> {
        let x = self.model.preparation.transform(columns).map_err(|e| BlockScoreError::Values(e.with_row_offset(first_row)))?;
        let contributions = self.layout.contributions(x.view()).map_err(|e| BlockScoreError::Model(e.to_string()))?;
        Ok(self.model.scores_of(&contributions))
    }
}

fn trees_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("tree", DataType::UInt32, false),
        Field::new("node", DataType::UInt32, false),
        Field::new("split_feature", DataType::UInt32, true),
        Field::new("threshold", DataType::Float64, false),
        Field::new("left_child", DataType::UInt32, false),
        Field::new("right_child", DataType::UInt32, false),
        Field::new("churn_fraction", DataType::Float64, false),
        Field::new("rows", DataType::UInt32, false),
        Field::new("weighted_rows", DataType::Float64, false),
        Field::new("impurity", DataType::Float64, false),
    ]))
}

/// Every node of every tree as one Parquet file ([`TREE_COLUMNS`]; a leaf has a null
/// `split_feature`). `churn_fraction` is the node's class-1 fraction; class 0's is 1 minus it,
/// stored implicitly. Written a row group at a time: a forest of tens of millions of nodes
/// (100M transaction lines) never has a second copy of itself in Arrow arrays.
fn write_trees<W: std::io::Write + Send>(trees: &[Tree], out: W) -> Result<W, String> {
    let write_error = |e: parquet::errors::ParquetError| format!("cannot write the trees: {e}");
    // ArrowWriter sets the file up (schema, properties, the Arrow schema in the metadata); its
    // lower-level halves then let the row groups' columns be encoded side by side: encoding
    // and compressing 4.4M nodes (10M lines) took 1.4 s on one thread at the end of the stage.
    // Row groups are still appended in order, each one whole, so the bytes are those of
    // writing batch after batch.
    let schema = trees_schema();
    let writer = ArrowWriter::try_new(out, schema.clone(), Some(trees_writer_properties())).map_err(write_error)?;
    let (mut file, factory) = writer.into_serialized_writer().map_err(write_error)?;
    let mut row_groups = 0;
    let mut append = |batches: &mut Vec<RecordBatch>| -> Result<(), String> {
        let encoded: Vec<Result<Vec<ArrowColumnChunk>, parquet::errors::ParquetError>> = batches
            .par_iter()
            .enumerate()
            .map(|(i, batch)| {
                let writers = factory.create_column_writers(row_groups + i)?;
                writers
                    .into_par_iter()
                    .zip(batch.columns().par_iter().zip(schema.fields().par_iter()))
                    .map(|(mut writer, (column, field))| {
                        for leaf in compute_leaves(field, column)? {
                            writer.write(&leaf)?;
                        }
                        writer.close()
                    })
                    .collect()
            })
            .collect();
        for chunks in encoded {
            let mut row_group = file.next_row_group().map_err(write_error)?;
            for chunk in chunks.map_err(write_error)? {
                chunk.append_to_row_group(&mut row_group).map_err(write_error)?;
            }
            row_group.close().map_err(write_error)?;
        }
        row_groups += batches.len();
        batches.clear();
        Ok(())
    };
    // A few whole row groups in memory at a time: a forest of tens of millions of nodes (100M
    // transaction lines) never has a second copy of itself in Arrow arrays.
    let at_once = rayon::current_num_threads().max(1);
    let mut batches = Vec::with_capacity(at_once);
    let mut columns = TreeColumns::default();
    for (t, each) in trees.iter().enumerate() {
        for (i, n) in each.nodes().enumerate() {
            columns.push(t, i, &n);
            if columns.len == crate::sink::ROWS_PER_ROW_GROUP {
                batches.push(columns.finish()?);
                if batches.len() == at_once {
                    append(&mut batches)?;
                }
            }
        }
    }
    if columns.len > 0 || trees.is_empty() {
        batches.push(columns.finish()?);
    }
    append(&mut batches)?;
    file.into_inner().map_err(write_error)
}

/// The output tables' writer properties ([`crate::sink::writer_properties`]), with the node
/// numbers (`node`, `left_child`, `right_child`) delta-encoded instead of dictionary-encoded.
/// They count up through each tree, so their differences pack into a few bits; a dictionary
/// holds them only while a row group has few distinct ones: at 10M transaction lines (trees of
/// 47k nodes, five to a row group) it did, at 100M (trees of 436k nodes) every number in a row
/// group is new, the dictionary filled and was dropped for plain values in every row group,
/// and writing the file grew 15× for 9.3× the nodes.
fn trees_writer_properties() -> parquet::file::properties::WriterProperties {
    use parquet::basic::Encoding;
    use parquet::schema::types::ColumnPath;
    let mut builder = crate::sink::writer_properties().into_builder();
    for column in ["node", "left_child", "right_child"] {
        let column = ColumnPath::from(column);
        builder = builder.set_column_dictionary_enabled(column.clone(), false).set_column_encoding(column, Encoding::DELTA_BINARY_PACKED);
    }
    builder.build()
}

/// The builders of the trees file's columns, in [`trees_schema`] order.
#[derive(Default)]
struct TreeColumns {
    tree: UInt32Builder,
    node: UInt32Builder,
    feature: UInt32Builder,
    threshold: Float64Builder,
    left: UInt32Builder,
    right: UInt32Builder,
    churn: Float64Builder,
    rows: UInt32Builder,
    weighted: Float64Builder,
    impurity: Float64Builder,
    len: usize,
}

impl TreeColumns {
    fn push(&mut self, tree: usize, index: usize, n: &Node<'_>) {
        self.tree.append_value(tree as u32);
        self.node.append_value(index as u32);
        self.feature.append_option(n.split_feature);
        self.threshold.append_value(n.threshold);
        self.left.append_value(n.left_child);
        self.right.append_value(n.right_child);
        self.churn.append_value(n.class_fractions.get(1).copied().unwrap_or(0.0));
        self.rows.append_value(n.n_rows);
        self.weighted.append_value(n.weighted_n_rows);
        self.impurity.append_value(n.impurity);
        self.len += 1;
    }

    /// The rows pushed so far as one batch; the builders start again empty.
    fn finish(&mut self) -> Result<RecordBatch, String> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.tree.finish()),
            Arc::new(self.node.finish()),
            Arc::new(self.feature.finish()),
            Arc::new(self.threshold.finish()),
            Arc::new(self.left.finish()),
            Arc::new(self.right.finish()),
            Arc::new(self.churn.finish()),
            Arc::new(self.rows.finish()),
            Arc::new(self.weighted.finish()),
            Arc::new(self.impurity.finish()),
        ];
        self.len = 0;
        RecordBatch::try_new(trees_schema(), columns).map_err(|e| e.to_string())
    }
}

fn read_trees(path: &Path) -> Result<Vec<Tree>, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file).and_then(|b| b.build()).map_err(|e| format!("not a trees file: {e}"))?;
    let mut trees: Vec<Tree> = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| e.to_string())?;
        if batch.schema().fields().iter().map(|f| f.name().as_str()).ne(TREE_COLUMNS.iter().copied()) || batch.schema().fields() != trees_schema().fields() {
            return Err(format!("expected the columns {}", TREE_COLUMNS.join(", ")));
        }
        let u32s = |i: usize| batch.column(i).as_primitive::<UInt32Type>().clone();
        let f64s = |i: usize| batch.column(i).as_primitive::<Float64Type>().clone();
        let (tree, node, feature, threshold, left, right) = (u32s(0), u32s(1), u32s(2), f64s(3), u32s(4), u32s(5));
        let (churn, rows, weighted, impurity) = (f64s(6), u32s(7), f64s(8), f64s(9));
        for r in 0..batch.num_rows() {
            let (t, i) = (tree.value(r) as usize, node.value(r) as usize);
            if t == trees.len() {
                trees.push(Tree::new(2));
            }
            let last = trees.len();
            match trees.get_mut(t) {
                Some(current) if t + 1 == last && current.len() == i => current.push_node(Node {
                    split_feature: (!feature.is_null(r)).then(|| feature.value(r)),
                    threshold: threshold.value(r),
                    left_child: left.value(r),
                    right_child: right.value(r),
                    class_fractions: &[1.0 - churn.value(r), churn.value(r)],
                    n_rows: rows.value(r),
                    weighted_n_rows: weighted.value(r),
                    impurity: impurity.value(r),
                }).map_err(|e| format!("row {r}: {e}"))?,
                _ => return Err(format!("row {r}: tree {t}, node {i} is out of order; nodes must come in tree then node order")),
            }
        }
    }
    // Pushing node by node leaves up to half of each tree's vectors spare.
    trees.iter_mut().for_each(Tree::shrink_to_fit);
    Ok(trees)
}

/// What stopped a block of customers from being scored: its values, which the preparation
/// refuses (the input's fault; row numbers are the table's), or the model itself.
#[derive(Debug, thiserror::Error)]
pub enum BlockScoreError {
    #[error("{0}")]
    Values(PrepError),
    #[error("{0}")]
    Model(String),
}

/// One scored customer. Borrows its feature names from the model: a name string per customer
/// and feature was a quarter of a gigabyte at 2.4M customers.
#[derive(Debug, Clone, PartialEq)]
pub struct Score<'model> {
    pub probability: f64,
    pub predicted: bool,
    /// (feature, contribution to the probability), largest |contribution| first.
    pub top: Vec<(&'model str, f64)>,
}

/// For each prepared column, the index of the declared feature it comes from (a one-hot
/// feature's columns all map to it), so contributions add up per feature a person declared.
pub fn feature_groups(preparation: &Preparation) -> Vec<usize> {
    preparation.features().iter().enumerate().flat_map(|(i, f)| std::iter::repeat_n(i, f.width())).collect()
}

/// The `n` largest contributions by absolute value, ties by feature order; zeros are left out
/// (a feature no split on the path used explains nothing).
pub fn top_contributions(per_feature: &[f64], n: usize) -> Vec<(usize, f64)> {
    let mut order: Vec<usize> = (0..per_feature.len()).filter(|&f| per_feature[f] != 0.0).collect();
    order.sort_by(|&a, &b| per_feature[b].abs().total_cmp(&per_feature[a].abs()).then(a.cmp(&b)));
    order.into_iter().take(n).map(|f| (f, per_feature[f])).collect()
}

/// Customers prepared and scored together. A block holds its prepared rows and their
/// contributions (rows × prepared columns × 8 bytes each, 58 MB at 28 columns); the whole
/// table at once held 2.6M × 28 × 16 bytes more at 100M transaction lines, besides the text of
/// its columns. Each block lays the forest out twice (probabilities, then contributions), so
/// blocks should not be small.
pub const SCORE_BLOCK_ROWS: usize = 1 << 18;

/// Risk deciles: customers ranked by probability, highest first (ties by row order), cut into
/// ten groups by the same rule as the lift table (`n = 10q + r`: the first `r` deciles get
/// `q + 1` customers), so decile 1 here is decile 1 there.
pub fn risk_deciles(probabilities: &[f64]) -> Vec<u8> {
    let n = probabilities.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| probabilities[b].total_cmp(&probabilities[a]).then(a.cmp(&b)));
    let (q, r) = (n / DECILES, n % DECILES);
    let mut deciles = vec![0u8; n];
    let mut rank = 0;
    for decile in 0..DECILES {
        let size = q + usize::from(decile < r);
        for &row in &order[rank..rank + size] {
            deciles[row] = decile as u8 + 1;
        }
        rank += size;
    }
    deciles
}

/// The per-customer table's schema: a contract downstream jobs read (see the README).
pub fn scores_schema(id_column: &str, id_type: &DataType, explain: usize) -> SchemaRef {
    let mut fields = vec![
        Field::new(id_column, id_type.clone(), false),
        Field::new("split", DataType::Utf8, false),
        Field::new("churn_probability", DataType::Float64, false),
        Field::new("risk_decile", DataType::Int32, false),
        Field::new("predicted_churn", DataType::Boolean, false),
        Field::new("churned", DataType::Boolean, true),
    ];
    for i in 1..=explain {
        fields.push(Field::new(format!("top_feature_{i}"), DataType::Utf8, true));
        fields.push(Field::new(format!("top_contribution_{i}"), DataType::Float64, true));
    }
    Arc::new(Schema::new(fields))
}

/// The scores table, built a block of customers at a time: one row per scored customer, with
/// the split each row was on (`train`, `test`, or `score` for customers the model did not
/// see), the observed label where there is one, and the risk decile, which ranks the whole
/// table and so is computed in [`ScoresTable::finish`].
pub struct ScoresTable {
    id_column: String,
    explain: usize,
    ids: Vec<ArrayRef>,
    split: StringBuilder,
    probabilities: Vec<f64>,
    predicted: BooleanBuilder,
    churned: BooleanBuilder,
    top: Vec<(StringBuilder, Float64Builder)>,
}

impl ScoresTable {
    pub fn new(id_column: &str, explain: usize) -> ScoresTable {
        ScoresTable {
            id_column: id_column.to_string(),
            explain,
            ids: Vec::new(),
            split: StringBuilder::new(),
            probabilities: Vec::new(),
            predicted: BooleanBuilder::new(),
            churned: BooleanBuilder::new(),
            top: (0..explain).map(|_| (StringBuilder::new(), Float64Builder::new())).collect(),
        }
    }

    /// Appends one block: `ids`, `scores`, `split(row)` and `label(row)` for each row of it.
    pub fn push<'s>(&mut self, ids: &ArrayRef, scores: &[Score<'_>], split: impl Fn(usize) -> &'s str, label: impl Fn(usize) -> Option<bool>) {
        self.ids.push(ids.clone());
        for (row, score) in scores.iter().enumerate() {
            self.split.append_value(split(row));
            self.probabilities.push(score.probability);
            self.predicted.append_value(score.predicted);
            self.churned.append_option(label(row));
        }
        append_top(&mut self.top, scores);
    }

    pub fn finish(mut self) -> Result<RecordBatch, datafusion::arrow::error::ArrowError> {
        let id_type = self.ids.first().map(|ids| ids.data_type().clone()).unwrap_or(DataType::Int64);
        let ids = match self.ids.as_slice() {
            [only] => only.clone(),
            [] => datafusion::arrow::array::new_empty_array(&id_type),
            blocks => datafusion::arrow::compute::concat(&blocks.iter().map(|b| b.as_ref()).collect::<Vec<_>>())?,
        };
        let deciles: Int32Array = risk_deciles(&self.probabilities).into_iter().map(|d| Some(i32::from(d))).collect();
        let mut columns: Vec<ArrayRef> = vec![
            ids,
            Arc::new(self.split.finish()),
            Arc::new(Float64Array::from(std::mem::take(&mut self.probabilities))),
            Arc::new(deciles),
            Arc::new(self.predicted.finish()),
            Arc::new(self.churned.finish()),
        ];
        columns.extend(self.top.into_iter().flat_map(|(mut name, mut value)| [Arc::new(name.finish()) as ArrayRef, Arc::new(value.finish())]));
        RecordBatch::try_new(scores_schema(&self.id_column, &id_type, self.explain), columns)
    }
}

fn append_top(top: &mut [(StringBuilder, Float64Builder)], scores: &[Score<'_>]) {
    for score in scores {
        for (i, (name, value)) in top.iter_mut().enumerate() {
            match score.top.get(i) {
                Some((feature, contribution)) => {
                    name.append_value(feature);
                    value.append_value(*contribution);
                }
                None => {
                    name.append_null();
                    value.append_null();
                }
            }
        }
    }
}

/// The `top_feature_i`, `top_contribution_i` columns of `scores` for i in 1..=`explain`, in that
/// order; null where a row has fewer than i contributing features.
pub fn top_columns(scores: &[Score<'_>], explain: usize) -> Vec<ArrayRef> {
    let mut top: Vec<(StringBuilder, Float64Builder)> = (0..explain).map(|_| (StringBuilder::new(), Float64Builder::new())).collect();
    append_top(&mut top, scores);
    top.into_iter().flat_map(|(mut name, mut value)| [Arc::new(name.finish()) as ArrayRef, Arc::new(value.finish())]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Appends a node to `tree`: a split on (feature, threshold, left child; the right child
    /// beside it), or a leaf.
    fn push(tree: &mut Tree, split: Option<(u32, f64, u32)>, churn_fraction: f64, rows: u32) {
        let fractions = [1.0 - churn_fraction, churn_fraction];
        let (split_feature, threshold, left_child, right_child) = match split {
            Some((feature, threshold, left)) => (Some(feature), threshold, left, left + 1),
            None => (None, 0.0, 0, 0),
        };
        let impurity = 1.0 - fractions.iter().map(|p| p * p).sum::<f64>();
        tree.push_node(Node { split_feature, threshold, left_child, right_child, class_fractions: &fractions, n_rows: rows, weighted_n_rows: f64::from(rows), impurity }).unwrap();
    }

    #[test]
    fn the_trees_file_gives_back_every_node_and_delta_encodes_the_node_numbers() {
        let mut split = Tree::new(2);
        push(&mut split, Some((1, 0.5, 1)), 0.25, 8);
        push(&mut split, None, 0.0, 6);
        push(&mut split, Some((0, -2.0, 3)), 1.0, 2);
        push(&mut split, None, 1.0, 1);
        push(&mut split, None, 1.0, 1);
        let mut leaf = Tree::new(2);
        push(&mut leaf, None, 0.5, 4);
        let trees = vec![split, leaf];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TREES_FILE);
        write_trees(&trees, std::fs::File::create(&path).unwrap()).unwrap();
        assert_eq!(read_trees(&path).unwrap(), trees);

        use parquet::basic::Encoding;
        use parquet::file::reader::FileReader;
        let reader = parquet::file::reader::SerializedFileReader::new(std::fs::File::open(&path).unwrap()).unwrap();
        for column in reader.metadata().row_group(0).columns() {
            let name = column.column_path().string();
            let encodings: Vec<Encoding> = column.encodings().collect();
            let dictionary = encodings.iter().any(|e| matches!(e, Encoding::RLE_DICTIONARY | Encoding::PLAIN_DICTIONARY));
            if ["node", "left_child", "right_child"].contains(&name.as_str()) {
                assert!(encodings.contains(&Encoding::DELTA_BINARY_PACKED) && !dictionary, "{name}: {encodings:?}");
            } else {
                assert!(dictionary, "{name}: {encodings:?}");
            }
        }
    }

    #[test]
    fn risk_deciles_put_the_highest_probabilities_in_decile_1_and_split_like_the_lift_table() {
        // 12 customers: deciles 1 and 2 get two each (12 = 10 × 1 + 2), the rest one.
        let probabilities: Vec<f64> = (0..12).map(|i| i as f64 / 12.0).collect();
        let deciles = risk_deciles(&probabilities);
        assert_eq!(deciles, vec![10, 9, 8, 7, 6, 5, 4, 3, 2, 2, 1, 1]);
    }

    #[test]
    fn tied_probabilities_fall_in_deciles_by_row_order() {
        let deciles = risk_deciles(&[0.5; 10]);
        assert_eq!(deciles, (1..=10).collect::<Vec<u8>>());
    }

    #[test]
    fn top_contributions_rank_by_size_whatever_the_sign_and_skip_zeros() {
        assert_eq!(top_contributions(&[0.1, -0.3, 0.0, 0.2], 3), vec![(1, -0.3), (3, 0.2), (0, 0.1)]);
        assert_eq!(top_contributions(&[0.0, 0.05], 3), vec![(1, 0.05)]);
    }

    #[test]
    fn a_scores_table_built_in_blocks_is_the_table_built_at_once_deciles_ranking_the_whole_table() {
        let ids: ArrayRef = Arc::new(datafusion::arrow::array::Int64Array::from((0..12).collect::<Vec<i64>>()));
        let scores: Vec<Score<'_>> = (0..12)
            .map(|i| Score { probability: ((i * 7) % 12) as f64 / 12.0, predicted: i % 3 == 0, top: if i % 2 == 0 { vec![("recency", 0.1 * i as f64), ("frequency", -0.01)] } else { vec![("monetary", 0.2)] } })
            .collect();
        let split = |row: usize| if row % 4 == 0 { "test" } else { "train" };
        let label = |row: usize| (row % 5 != 0).then_some(row % 2 == 0);
        let mut at_once = ScoresTable::new("customer_id", 2);
        at_once.push(&ids, &scores, split, label);
        let at_once = at_once.finish().unwrap();
        let mut in_blocks = ScoresTable::new("customer_id", 2);
        for (start, end) in [(0, 5), (5, 6), (6, 12)] {
            in_blocks.push(&ids.slice(start, end - start), &scores[start..end], |r| split(start + r), |r| label(start + r));
        }
        let in_blocks = in_blocks.finish().unwrap();
        assert_eq!(in_blocks, at_once);
        let deciles: Vec<i32> = at_once.column_by_name("risk_decile").unwrap().as_primitive::<datafusion::arrow::datatypes::Int32Type>().values().to_vec();
        let expected: Vec<i32> = risk_deciles(&scores.iter().map(|s| s.probability).collect::<Vec<_>>()).into_iter().map(i32::from).collect();
        assert_eq!(deciles, expected);
        assert_eq!(at_once.num_columns(), 6 + 2 * 2);
    }

    #[test]
    fn an_empty_scores_table_has_the_documented_columns() {
        let table = ScoresTable::new("customer_id", 1).finish().unwrap();
        assert_eq!(table.num_rows(), 0);
        let names: Vec<String> = table.schema().fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(names, ["customer_id", "split", "churn_probability", "risk_decile", "predicted_churn", "churned", "top_feature_1", "top_contribution_1"]);
    }
}
