use super::flat::{FlatGroup, Purpose, RowCodes, TaskRows, ThresholdRanks};
use super::*;
use ndarray::{Array2, array};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Noisy logistic rule on the first three of `n_features` uniform(-1, 1) features:
/// P(y = 1) = sigmoid(6·x0 − 4·x1·x2 + 2·x2); the others are noise.
fn planted(rows: usize, n_features: usize, seed: u64) -> (Array2<f64>, Vec<usize>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let x = Array2::from_shape_fn((rows, n_features), |_| rng.random_range(-1.0..1.0));
    let labels = x
        .rows()
        .into_iter()
        .map(|r| {
            let logit: f64 = 6.0 * r[0] - 4.0 * r[1] * r[2] + 2.0 * r[2];
            let p = 1.0 / (1.0 + (-logit).exp());
            usize::from(rng.random::<f64>() < p)
        })
        .collect();
    (x, labels)
}

fn forest(params: ForestParams, x: &Array2<f64>, y: &[usize]) -> Result<RandomForest, ForestError> {
    RandomForest::fit(&params.check()?, x.view(), y, None)
}

fn single_tree(
    params: DecisionTreeParams,
    x: &Array2<f64>,
    y: &[usize],
) -> Result<DecisionTree, ForestError> {
    DecisionTree::fit(&params.check()?, x.view(), y, None)
}

fn features_used(tree: &Tree) -> std::collections::BTreeSet<u32> {
    tree.nodes().filter_map(|n| n.split_feature).collect()
}

#[test]
fn probabilities_are_bit_identical_with_one_and_two_threads() -> TestResult {
    let (x, y) = planted(1500, 6, 1);
    let params = ForestParams::new()
        .n_trees(12)
        .oob_score(true)
        .class_weight(ClassWeight::BalancedSubsample)
        .seed(7);
    let fit_and_predict = |threads: usize| -> Result<
        (RandomForest, Vec<u64>),
        Box<dyn std::error::Error + Send + Sync>,
    > {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()?;
        pool.install(|| {
            let model = forest(params.clone(), &x, &y)?;
            let bits = model
                .predict_proba(x.view())?
                .iter()
                .map(|p| p.to_bits())
                .collect();
            Ok((model, bits))
        })
    };
    let (one_model, one_bits) = fit_and_predict(1)?;
    let (two_model, two_bits) = fit_and_predict(2)?;
    assert_eq!(one_bits, two_bits);
    assert_eq!(
        one_model, two_model,
        "trees, importances and OOB must match too"
    );
    Ok(())
}

#[test]
fn forest_learns_a_planted_noisy_rule() -> TestResult {
    let (x, y) = planted(3000, 8, 2);
    let (x_test, y_test) = planted(2000, 8, 3);
    let model = forest(ForestParams::new().n_trees(30).oob_score(true), &x, &y)?;
    let auc = roc_auc(
        &y_test,
        model
            .predict_proba(x_test.view())?
            .as_slice()
            .ok_or("contiguous")?,
    )
    .ok_or("auc")?;
    // The Bayes-optimal AUC of this rule is about 0.93; a broken split search lands near 0.5.
    assert!(auc > 0.88, "test AUC {auc}");
    // The informative feature x0 dominates the importances, which sum to 1.
    let importances = &model.feature_importances;
    assert!((importances.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    let top = (0..importances.len()).max_by(|&a, &b| importances[a].total_cmp(&importances[b]));
    assert_eq!(top, Some(0));
    // OOB probabilities rank the training rows about as well as the test rows are ranked.
    let oob = model.oob().ok_or("oob requested")?;
    let (scored_y, scored_p): (Vec<usize>, Vec<f64>) = oob
        .probabilities
        .iter()
        .zip(&y)
        .filter_map(|(p, &l)| p.map(|p| (l, p)))
        .unzip();
    assert!(
        scored_y.len() > 2900,
        "nearly every row is OOB for some of 30 trees"
    );
    let oob_auc = roc_auc(&scored_y, &scored_p).ok_or("auc")?;
    assert!(
        oob_auc > 0.86 && (oob_auc - auc).abs() < 0.04,
        "OOB AUC {oob_auc} vs test {auc}"
    );
    assert!(oob.accuracy > 0.75, "OOB accuracy {}", oob.accuracy);
    Ok(())
}

#[test]
fn full_depth_tree_fits_distinct_training_rows_exactly() -> TestResult {
    let (x, y) = planted(2000, 5, 4);
    let model = single_tree(DecisionTreeParams::new(), &x, &y)?;
    // Quantile bins (256) are coarser than 2000 distinct values, yet the tree keeps splitting on
    // other features until every leaf is pure.
    assert_eq!(model.predict_labels(x.view())?.to_vec(), y);
    assert!(
        model
            .predict_proba(x.view())?
            .iter()
            .all(|&p| p == 0.0 || p == 1.0)
    );
    Ok(())
}

#[test]
fn features_are_sampled_per_split_not_per_tree() -> TestResult {
    // Every feature carries signal, so whichever single feature a split draws, it can split.
    let (x, y) = planted(1000, 5, 5);
    let model = single_tree(
        DecisionTreeParams::new().max_features(MaxFeatures::Fraction(0.2)),
        &x,
        &y,
    )?;
    let used = features_used(&model.tree);
    assert!(
        used.len() >= 3,
        "one feature per split, yet the tree uses {used:?}"
    );
    Ok(())
}

#[test]
fn balanced_class_weight_equalises_class_mass_in_a_leaf() -> TestResult {
    // A constant feature allows no split, so the root is the only leaf. Labels 3 × 0, 1 × 1:
    // scikit-learn's balanced weights are 4 / (2·3) = 2/3 and 4 / (2·1) = 2, so the leaf holds
    // 3·2/3 = 2 of class 0 and 2 of class 1: probability 0.5 instead of 0.25.
    let x = array![[1.0], [1.0], [1.0], [1.0]];
    let y = [0, 0, 0, 1];
    let plain = single_tree(DecisionTreeParams::new(), &x, &y)?;
    let balanced = single_tree(
        DecisionTreeParams::new().class_weight(ClassWeight::Balanced),
        &x,
        &y,
    )?;
    assert_eq!(plain.predict_proba(x.view())?[0], 0.25);
    assert_eq!(balanced.predict_proba(x.view())?[0], 0.5);
    assert_eq!(
        balanced.tree.node(0).map(|root| root.weighted_n_rows),
        Some(4.0)
    );
    Ok(())
}

#[test]
fn balanced_subsample_balances_each_bootstrap_draw() -> TestResult {
    // Same constant feature, 14 × 0 and 6 × 1. With per-draw weights every tree's leaf is 50/50
    // (both classes are drawn in every tree here); with whole-set weights the draw's own
    // imbalance shows through.
    let x = Array2::from_elem((20, 1), 1.0);
    let y: Vec<usize> = (0..20).map(|i| usize::from(i < 6)).collect();
    let subsample = forest(
        ForestParams::new()
            .n_trees(20)
            .class_weight(ClassWeight::BalancedSubsample),
        &x,
        &y,
    )?;
    let whole_set = forest(
        ForestParams::new()
            .n_trees(20)
            .class_weight(ClassWeight::Balanced),
        &x,
        &y,
    )?;
    let leaf = |tree: &Tree| {
        tree.node(0)
            .map_or(f64::NAN, |root| root.class_fractions[1])
    };
    assert!(
        subsample
            .trees
            .iter()
            .all(|t| (leaf(t) - 0.5).abs() < 1e-12)
    );
    assert!(whole_set.trees.iter().any(|t| (leaf(t) - 0.5).abs() > 0.01));
    Ok(())
}

#[test]
fn bias_plus_contributions_equals_probability() -> TestResult {
    let (x, y) = planted(1000, 6, 6);
    let model = forest(ForestParams::new().n_trees(15).max_depth(Some(8)), &x, &y)?;
    let (x_test, _) = planted(300, 6, 7);
    let probabilities = model.predict_proba(x_test.view())?;
    let contributions = model.contributions(x_test.view())?;
    for (row, &p) in contributions
        .per_feature
        .rows()
        .into_iter()
        .zip(&probabilities)
    {
        assert!((contributions.bias + row.sum() - p).abs() < 1e-9);
    }
    // The informative feature moves predictions the most on average.
    let mean_abs = contributions
        .per_feature
        .mapv(f64::abs)
        .mean_axis(ndarray::Axis(0))
        .ok_or("rows")?;
    assert!(mean_abs[0] > mean_abs[3] && mean_abs[0] > mean_abs[4]);
    assert_same_bits(
        &contributions.probabilities,
        &probabilities,
        "forest probabilities from the contribution walks",
    );
    let single = single_tree(DecisionTreeParams::new(), &x, &y)?;
    let single_contributions = single.contributions(x_test.view())?;
    let single_p = single.predict_proba(x_test.view())?;
    for (row, &p) in single_contributions
        .per_feature
        .rows()
        .into_iter()
        .zip(&single_p)
    {
        assert!((single_contributions.bias + row.sum() - p).abs() < 1e-9);
    }
    assert_same_bits(
        &single_contributions.probabilities,
        &single_p,
        "tree probabilities from the contribution walks",
    );
    Ok(())
}

#[test]
fn lossless_binning_tree_agrees_with_linfa_trees() -> TestResult {
    use linfa::prelude::*;
    // 200 rows, so every feature has at most 200 distinct values and gets one bin per value:
    // binning is lossless, both trees see the same candidate splits (midpoints between
    // neighbouring values) and both break Gini ties by lowest feature, then lowest threshold.
    // Values are distinct within each column because linfa-trees 0.8.1 skips a candidate split
    // when a row outside the node shares the value at the cut, which would make its tree differ
    // for a reason unrelated to ours. Labels are noisy, so trees are deep.
    let (x, y) = planted(200, 4, 8);
    let (x_test, _) = planted(3000, 4, 9);
    let ours = single_tree(DecisionTreeParams::new(), &x, &y)?;
    let dataset = Dataset::new(x.clone(), Array1::from(y.clone()));
    let theirs = linfa_trees::DecisionTree::params()
        .max_depth(None)
        .min_weight_split(2.0)
        .min_weight_leaf(1.0)
        .min_impurity_decrease(1e-12)
        .fit(&dataset)?;
    let their_labels: Array1<usize> = theirs.predict(&x_test);
    let our_labels = ours.predict_labels(x_test.view())?;
    let disagreements = our_labels
        .iter()
        .zip(&their_labels)
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(disagreements, 0, "of {} test rows", x_test.nrows());
    let their_train: Array1<usize> = theirs.predict(&x);
    assert_eq!(
        their_train.to_vec(),
        y,
        "both trees fit distinct rows exactly"
    );
    Ok(())
}

#[test]
fn composes_with_linfa_dataset_fit_and_predict() -> TestResult {
    use linfa::prelude::*;
    let (x, y) = planted(800, 4, 9);
    let dataset = Dataset::new(x.clone(), Array1::from(y.clone()));
    let model: RandomForest = ForestParams::new().n_trees(5).fit(&dataset)?;
    let probabilities: Array1<f64> = model.predict(&x);
    let labels: Array1<usize> = model.predict(&x);
    assert_eq!(probabilities, model.predict_proba(x.view())?);
    assert_eq!(labels, probabilities.mapv(|p| usize::from(p > 0.5)));
    let tree: DecisionTree = DecisionTreeParams::new().fit(&dataset)?;
    let tree_labels: Array1<usize> = tree.predict(&x);
    assert_eq!(tree_labels.to_vec(), y);
    // Hyperparameter errors come back through linfa's Fit as our own error.
    let refused: Result<RandomForest, ForestError> = ForestParams::new().n_trees(0).fit(&dataset);
    assert!(matches!(refused, Err(ForestError::ZeroTrees)));
    Ok(())
}

#[test]
fn sample_weights_act_like_repeated_rows() -> TestResult {
    // Weight 3 on a row is the same leaf mass as three copies of it.
    let x = array![[1.0], [1.0], [1.0]];
    let params = DecisionTreeParams::new().check()?;
    let weighted = DecisionTree::fit(&params, x.view(), &[0, 1, 1], Some(&[3.0, 1.0, 0.0]))?;
    assert_eq!(weighted.predict_proba(x.view())?[0], 0.25);
    // A zero-weight row is left out of the tree entirely.
    assert_eq!(weighted.tree.node(0).map(|root| root.n_rows), Some(2));
    Ok(())
}

#[test]
fn saved_model_round_trips_through_json() -> TestResult {
    let (x, y) = planted(500, 3, 10);
    let model = forest(ForestParams::new().n_trees(4), &x, &y)?;
    let json = serde_json::to_string(&model)?;
    for field in [
        "\"n_features\"",
        "\"trees\"",
        "\"split_feature\"",
        "\"threshold\"",
        "\"class_fractions\"",
    ] {
        assert!(json.contains(field), "{field} is part of the model format");
    }
    let loaded: RandomForest = serde_json::from_str(&json)?;
    assert_eq!(
        loaded.predict_proba(x.view())?,
        model.predict_proba(x.view())?
    );
    Ok(())
}

#[test]
fn missing_values_have_their_own_bin_and_go_right() -> TestResult {
    // y = 1 exactly when x0 is missing: only the missing bin separates the classes.
    let x = array![
        [0.1, 5.0],
        [f64::NAN, 5.0],
        [0.7, 5.0],
        [f64::NAN, 5.0],
        [0.3, 5.0],
        [0.9, 5.0]
    ];
    let y = [0, 1, 0, 1, 0, 0];
    let model = single_tree(DecisionTreeParams::new(), &x, &y)?;
    assert_eq!(model.predict_labels(x.view())?.to_vec(), y);
    let root = model.tree.node(0).ok_or("a fitted tree has a root")?;
    assert_eq!(root.split_feature, Some(0));
    assert_eq!(
        root.threshold,
        f64::MAX,
        "every real value goes left, NaN right"
    );
    let unseen = array![[1e300, 0.0], [f64::NAN, 0.0], [-1e300, 0.0]];
    assert_eq!(model.predict_labels(unseen.view())?.to_vec(), vec![0, 1, 0]);
    // A column that is entirely missing is constant and never split on.
    let all_missing = array![
        [f64::NAN, 0.0],
        [f64::NAN, 1.0],
        [f64::NAN, 2.0],
        [f64::NAN, 3.0]
    ];
    let model = single_tree(DecisionTreeParams::new(), &all_missing, &[0, 0, 1, 1])?;
    assert_eq!(features_used(&model.tree), [1].into());
    Ok(())
}

#[test]
fn hyperparameter_rules_each_have_their_own_error() {
    let forest_error = |p: ForestParams| p.check().err();
    assert!(matches!(
        forest_error(ForestParams::new().min_samples_leaf(0)),
        Some(ForestError::ZeroMinSamplesLeaf)
    ));
    assert!(matches!(
        forest_error(ForestParams::new().n_trees(0)),
        Some(ForestError::ZeroTrees)
    ));
    assert!(matches!(
        forest_error(ForestParams::new().max_depth(Some(0))),
        Some(ForestError::ZeroMaxDepth)
    ));
    assert!(matches!(
        forest_error(ForestParams::new().min_samples_split(1)),
        Some(ForestError::MinSamplesSplitBelowTwo(1))
    ));
    for fraction in [0.0, -0.5, 1.5, f64::NAN] {
        let error = forest_error(ForestParams::new().max_features(MaxFeatures::Fraction(fraction)));
        assert!(
            matches!(error, Some(ForestError::MaxFeaturesFractionOutOfRange(_))),
            "{fraction}"
        );
    }
    assert!(forest_error(ForestParams::new().max_features(MaxFeatures::Fraction(1.0))).is_none());
    assert!(matches!(
        forest_error(ForestParams::new().max_samples(Some(0.0))),
        Some(ForestError::MaxSamplesOutOfRange(_))
    ));
    assert!(matches!(
        forest_error(ForestParams::new().bootstrap(false).max_samples(Some(0.5))),
        Some(ForestError::MaxSamplesWithoutBootstrap)
    ));
    assert!(matches!(
        forest_error(ForestParams::new().bootstrap(false).oob_score(true)),
        Some(ForestError::OobScoreWithoutBootstrap)
    ));
    assert!(matches!(
        forest_error(ForestParams::new().max_bins(257)),
        Some(ForestError::MaxBinsOutOfRange(257))
    ));
    assert!(matches!(
        forest_error(ForestParams::new().max_bins(1)),
        Some(ForestError::MaxBinsOutOfRange(1))
    ));
    assert!(matches!(
        DecisionTreeParams::new().min_samples_leaf(0).check(),
        Err(ForestError::ZeroMinSamplesLeaf)
    ));
}

#[test]
fn bad_training_data_is_refused_with_a_clear_error() -> TestResult {
    let params = ForestParams::new().n_trees(2).check()?;
    let fit = |x: &Array2<f64>, y: &[usize], w: Option<&[f64]>| {
        RandomForest::fit(&params, x.view(), y, w).err()
    };
    let x = array![[0.0, 1.0], [1.0, 0.0], [2.0, 2.0]];
    assert!(matches!(
        fit(&Array2::zeros((0, 2)), &[], None),
        Some(ForestError::NoRows)
    ));
    assert!(matches!(
        fit(&Array2::zeros((3, 0)), &[0, 1, 0], None),
        Some(ForestError::NoFeatures)
    ));
    assert!(matches!(
        fit(&x, &[0, 1], None),
        Some(ForestError::LabelCountMismatch { rows: 3, labels: 2 })
    ));
    assert!(matches!(
        fit(&x, &[1, 1, 1], None),
        Some(ForestError::SingleClass(1))
    ));
    assert!(matches!(
        fit(&x, &[0, 2, 1], None),
        Some(ForestError::LabelNotBinary { row: 1, label: 2 })
    ));
    let mut infinite = x.clone();
    infinite[(2, 1)] = f64::NEG_INFINITY;
    assert!(matches!(
        fit(&infinite, &[0, 1, 0], None),
        Some(ForestError::InfiniteFeature { row: 2, feature: 1 })
    ));
    assert!(matches!(
        fit(&x, &[0, 1, 0], Some(&[1.0])),
        Some(ForestError::SampleWeightCountMismatch { .. })
    ));
    assert!(matches!(
        fit(&x, &[0, 1, 0], Some(&[1.0, -1.0, 1.0])),
        Some(ForestError::InvalidSampleWeight { row: 1, .. })
    ));
    assert!(matches!(
        fit(&x, &[0, 1, 0], Some(&[1.0, f64::NAN, 1.0])),
        Some(ForestError::InvalidSampleWeight { row: 1, .. })
    ));
    assert!(matches!(
        fit(&x, &[0, 1, 0], Some(&[0.0; 3])),
        Some(ForestError::ZeroTotalSampleWeight)
    ));
    let model = RandomForest::fit(&params, x.view(), &[0, 1, 0], None)?;
    assert!(matches!(
        model.predict_proba(Array2::zeros((1, 3)).view()),
        Err(ForestError::FeatureCountMismatch {
            expected: 2,
            found: 3
        })
    ));
    Ok(())
}

// --- prediction layout: the same bits as walking the stored trees ---------------------------

/// The plain reading of a stored tree, independent of the prediction layout: the indices of the
/// nodes on `row`'s path, root first, leaf last (`x <= threshold` goes left, so NaN goes right).
fn reference_path(tree: &Tree, row: ndarray::ArrayView1<'_, f64>) -> Vec<usize> {
    let mut path = vec![0];
    let mut index = 0;
    while let Some(Node {
        split_feature: Some(feature),
        threshold,
        left_child,
        right_child,
        ..
    }) = tree.node(index)
    {
        index = if row[feature as usize] <= threshold {
            left_child as usize
        } else {
            right_child as usize
        };
        path.push(index);
    }
    path
}

/// NaN for a node the tree does not have, so that no comparison of bits can pass.
fn positive_fraction(tree: &Tree, node: usize) -> f64 {
    tree.node(node)
        .map_or(f64::NAN, |node| node.class_fractions[1])
}

/// Per row: the trees' leaf fractions summed in tree order, then divided by the tree count.
fn reference_probabilities(trees: &[Tree], x: &Array2<f64>) -> Vec<f64> {
    x.rows()
        .into_iter()
        .map(|row| {
            let mut sum = 0.0;
            for tree in trees {
                let leaf = *reference_path(tree, row).last().unwrap_or(&0);
                sum += positive_fraction(tree, leaf);
            }
            sum / trees.len() as f64
        })
        .collect()
}

/// Saabas contributions: per row, tree by tree, each path step adds child minus parent to the
/// parent's split feature; then every entry is divided by the tree count.
fn reference_contributions(trees: &[Tree], x: &Array2<f64>) -> (f64, Array2<f64>) {
    let n_trees = trees.len() as f64;
    let bias = trees.iter().map(|t| positive_fraction(t, 0)).sum::<f64>() / n_trees;
    let mut per_feature = Array2::zeros(x.dim());
    for (row, mut out) in x.rows().into_iter().zip(per_feature.rows_mut()) {
        for tree in trees {
            for step in reference_path(tree, row).windows(2) {
                if let Some(feature) = tree.node(step[0]).and_then(|node| node.split_feature) {
                    out[feature as usize] +=
                        positive_fraction(tree, step[1]) - positive_fraction(tree, step[0]);
                }
            }
        }
        out.mapv_inplace(|v| v / n_trees);
    }
    (bias, per_feature)
}

/// Asserts `actual` and `expected` hold the same floats bit for bit, naming the first
/// difference instead of printing both vectors.
fn assert_same_bits<'a>(
    actual: impl IntoIterator<Item = &'a f64>,
    expected: impl IntoIterator<Item = &'a f64>,
    what: &str,
) {
    let actual: Vec<f64> = actual.into_iter().copied().collect();
    let expected: Vec<f64> = expected.into_iter().copied().collect();
    assert_eq!(actual.len(), expected.len(), "{what}: lengths");
    let differing: Vec<usize> = (0..actual.len())
        .filter(|&i| actual[i].to_bits() != expected[i].to_bits())
        .collect();
    if let Some(&first) = differing.first() {
        panic!(
            "{what}: {} of {} values differ; first at {first}: {:e} instead of {:e}",
            differing.len(),
            actual.len(),
            actual[first],
            expected[first]
        );
    }
}

/// `planted` with a tenth of the values of features 0 and 2 missing, and one row all missing.
fn planted_with_missing(rows: usize, n_features: usize, seed: u64) -> (Array2<f64>, Vec<usize>) {
    let (mut x, labels) = planted(rows, n_features, seed);
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    for mut row in x.rows_mut() {
        for feature in [0, 2] {
            if rng.random::<f64>() < 0.1 {
                row[feature] = f64::NAN;
            }
        }
    }
    x.row_mut(rows / 2).fill(f64::NAN);
    (x, labels)
}

/// Asserts that `model` (and its serde_json round trip) predicts the reference walk's bits on
/// `x`, both row-major and as a column-major copy (which prediction must lay out itself).
fn assert_forest_matches_reference(model: &RandomForest, x: &Array2<f64>) -> TestResult {
    let loaded: RandomForest = serde_json::from_str(&serde_json::to_string(model)?)?;
    assert_eq!(
        loaded.trees, model.trees,
        "the JSON round trip keeps every node"
    );
    let column_major = x.t().as_standard_layout().reversed_axes().to_owned();
    assert!(!column_major.is_standard_layout());
    let expected_probabilities = reference_probabilities(&model.trees, x);
    let (bias, per_feature) = reference_contributions(&model.trees, x);
    for candidate in [model, &loaded] {
        for view in [x.view(), column_major.view()] {
            assert_same_bits(
                &candidate.predict_proba(view)?,
                &expected_probabilities,
                "probabilities",
            );
            let contributions = candidate.contributions(view)?;
            assert_same_bits(&[contributions.bias], &[bias], "bias");
            assert_same_bits(&contributions.per_feature, &per_feature, "contributions");
        }
    }
    Ok(())
}

#[test]
fn forest_predictions_equal_a_plain_walk_of_the_stored_trees_bit_for_bit() -> TestResult {
    let (x, y) = planted_with_missing(2000, 6, 11);
    let (x_test, _) = planted_with_missing(700, 6, 12);
    assert!(x_test.iter().any(|v| v.is_nan()));
    let params = ForestParams::new().n_trees(12).oob_score(true).seed(3);
    let model = forest(params.clone(), &x, &y)?;
    assert_forest_matches_reference(&model, &x_test)?;
    // Shallow trees too: many rows share a leaf.
    let shallow = forest(params.clone().max_depth(Some(3)), &x, &y)?;
    assert_forest_matches_reference(&shallow, &x_test)?;

    // OOB: the same trees grown again with their in-bag masks, and each row's out-of-bag trees
    // summed in tree order.
    let checked = params.check()?;
    let data = check_data(x.view(), &y, None)?;
    let grown = grow_trees(&data, &checked.tree, 12, Some(x.nrows()), 3).trees;
    let grown_trees: Vec<Tree> = grown.iter().map(|g| g.tree.clone()).collect();
    assert_eq!(grown_trees, model.trees);
    let expected_oob: Vec<Option<u64>> = x
        .rows()
        .into_iter()
        .enumerate()
        .map(|(row_index, row)| {
            let mut sum = 0.0;
            let mut n = 0;
            for g in grown.iter().filter(|g| !g.in_bag[row_index]) {
                let leaf = *reference_path(&g.tree, row).last().unwrap_or(&0);
                sum += positive_fraction(&g.tree, leaf);
                n += 1;
            }
            (n > 0).then(|| (sum / n as f64).to_bits())
        })
        .collect();
    let oob = model.oob().ok_or("oob requested")?;
    let oob_bits: Vec<Option<u64>> = oob
        .probabilities
        .iter()
        .map(|p| p.map(f64::to_bits))
        .collect();
    assert_eq!(oob_bits, expected_oob);
    // The same walk predicts the training rows, as predict_proba does, bit for bit.
    let training = model
        .training_probabilities
        .as_deref()
        .ok_or("training predictions kept with oob_score")?;
    let predicted = model.predict_proba(x.view())?;
    assert_eq!(
        training.iter().map(|p| p.to_bits()).collect::<Vec<_>>(),
        predicted.iter().map(|p| p.to_bits()).collect::<Vec<_>>()
    );
    Ok(())
}

#[test]
fn walking_the_forest_a_few_trees_at_a_time_gives_the_same_bits_as_all_at_once() -> TestResult {
    let (x, y) = planted_with_missing(2000, 6, 21);
    let (x_test, _) = planted_with_missing(600, 6, 22);
    let params = ForestParams::new().n_trees(9).oob_score(true).seed(5);
    let checked = params.check()?;
    let data = check_data(x.view(), &y, None)?;
    let grown = grow_trees(&data, &checked.tree, 9, Some(x.nrows()), 5);
    let bin_edges = Arc::new(ThresholdRanks::of_bin_edges(&grown.bin_edges));
    let (trees, in_bag): (Vec<Tree>, Vec<Vec<bool>>) =
        grown.trees.into_iter().map(|g| (g.tree, g.in_bag)).unzip();
    let largest = trees.iter().map(Tree::len).max().unwrap_or(0);
    let all_nodes: usize = trees.iter().map(Tree::len).sum();
    let bits = |v: &[f64]| v.iter().map(|p| p.to_bits()).collect::<Vec<_>>();
    let whole = mean_positive_probability(&trees, 6, x_test.view(), all_nodes, None)?;
    let whole_contributions = contributions_of(&trees, 6, x_test.view(), all_nodes)?;
    let (whole_oob, whole_training) = oob_estimate(&trees, &in_bag, x.view(), &y, all_nodes, None)?;
    // The training rows' predictions from the OOB walk are predict_proba's, bit for bit.
    let training = mean_positive_probability(&trees, 6, x.view(), all_nodes, None)?;
    assert_eq!(
        bits(&whole_training),
        bits(training.as_slice().ok_or("contiguous")?),
        "training predictions from the OOB walk"
    );
    // One tree per group, two or three per group, and uneven groups.
    for group_nodes in [1, largest, 2 * largest + 1, all_nodes / 2] {
        let grouped = mean_positive_probability(&trees, 6, x_test.view(), group_nodes, None)?;
        assert_eq!(
            bits(grouped.as_slice().ok_or("contiguous")?),
            bits(whole.as_slice().ok_or("contiguous")?),
            "probabilities, groups of {group_nodes} nodes"
        );
        let contributions = contributions_of(&trees, 6, x_test.view(), group_nodes)?;
        assert_eq!(
            contributions.bias.to_bits(),
            whole_contributions.bias.to_bits()
        );
        assert_eq!(
            bits(contributions.per_feature.as_slice().ok_or("contiguous")?),
            bits(
                whole_contributions
                    .per_feature
                    .as_slice()
                    .ok_or("contiguous")?
            ),
            "contributions, groups of {group_nodes} nodes"
        );
        // Laid out group by group, or every group against the fit's bin edges.
        for thresholds in [None, Some(Arc::clone(&bin_edges))] {
            let with_edges = thresholds.is_some();
            let (oob, training) =
                oob_estimate(&trees, &in_bag, x.view(), &y, group_nodes, thresholds)?;
            assert_eq!(
                oob.probabilities, whole_oob.probabilities,
                "OOB, groups of {group_nodes} nodes, bin edges {with_edges}"
            );
            assert_eq!(
                bits(&training),
                bits(&whole_training),
                "training predictions, groups of {group_nodes} nodes, bin edges {with_edges}"
            );
            assert_eq!(oob.accuracy.to_bits(), whole_oob.accuracy.to_bits());
        }
    }
    Ok(())
}

#[test]
fn tree_predictions_equal_a_plain_walk_of_the_stored_tree_bit_for_bit() -> TestResult {
    let (x, y) = planted_with_missing(1500, 5, 13);
    let (x_test, _) = planted_with_missing(500, 5, 14);
    let model = single_tree(DecisionTreeParams::new(), &x, &y)?;
    let loaded: DecisionTree = serde_json::from_str(&serde_json::to_string(&model)?)?;
    let trees = std::slice::from_ref(&model.tree);
    let (bias, per_feature) = reference_contributions(trees, &x_test);
    for candidate in [&model, &loaded] {
        assert_same_bits(
            &candidate.predict_proba(x_test.view())?,
            &reference_probabilities(trees, &x_test),
            "probabilities",
        );
        let contributions = candidate.contributions(x_test.view())?;
        assert_same_bits(&[contributions.bias], &[bias], "bias");
        assert_same_bits(&contributions.per_feature, &per_feature, "contributions");
    }
    Ok(())
}

#[test]
fn a_tree_that_cannot_be_walked_is_refused_not_followed() -> TestResult {
    let (x, y) = planted(300, 3, 15);
    let model = forest(ForestParams::new().n_trees(3).max_depth(Some(4)), &x, &y)?;
    let split = model.trees[1]
        .nodes()
        .position(|n| n.split_feature.is_some())
        .ok_or("the tree splits")?;
    // Tree 1 again, with `edit` applied to its first split.
    let broken = |edit: &dyn Fn(&mut Node<'_>)| -> Result<Option<ForestError>, ForestError> {
        let mut edited = Tree::new(2);
        for (index, mut node) in model.trees[1].nodes().enumerate() {
            if index == split {
                edit(&mut node);
            }
            edited.push_node(node)?;
        }
        let mut model = model.clone();
        model.trees[1] = edited;
        Ok(model.predict_proba(x.view()).err())
    };
    let problem = |error: Option<ForestError>| match error {
        Some(ForestError::MalformedTree {
            tree: 1, problem, ..
        }) => problem,
        other => panic!("expected a malformed tree 1, got {other:?}"),
    };
    assert_eq!(
        problem(broken(&|n| n.left_child = 10_000)?),
        "a child index points outside the tree"
    );
    assert_eq!(
        problem(broken(&|n| n.right_child = 0)?),
        "the node is reached twice"
    );
    assert_eq!(
        problem(broken(&|n| n.split_feature = Some(3))?),
        "the split feature is not a model feature"
    );
    // A tree of one class: its nodes have no positive-class fraction to predict.
    let mut one_class = model.clone();
    one_class.trees[1] = Tree::new(1);
    one_class.trees[1].push_node(leaf(&[1.0]))?;
    assert_eq!(
        problem(one_class.predict_proba(x.view()).err()),
        "the node has no positive-class fraction"
    );
    let mut empty = model.clone();
    empty.trees[1] = Tree::new(2);
    assert_eq!(
        problem(empty.contributions(x.view()).err()),
        "the tree has no nodes"
    );
    Ok(())
}

/// A leaf of four rows with these class fractions.
fn leaf(class_fractions: &[f64]) -> Node<'_> {
    Node {
        split_feature: None,
        threshold: 0.0,
        left_child: 0,
        right_child: 0,
        class_fractions,
        n_rows: 4,
        weighted_n_rows: 4.0,
        impurity: 1.0 - class_fractions.iter().map(|p| p * p).sum::<f64>(),
    }
}

#[test]
fn a_model_without_features_predicts_its_single_leaf_for_every_row() -> TestResult {
    let mut tree = Tree::new(2);
    tree.push_node(leaf(&[0.75, 0.25]))?;
    let model = RandomForest {
        n_features: 0,
        n_classes: 2,
        trees: vec![tree],
        feature_importances: Vec::new(),
        oob_accuracy: None,
        oob_probabilities: None,
        training_probabilities: None,
        bin_edges: None,
    };
    // More rows than walk in lockstep, none of them with a value to read.
    let x = Array2::<f64>::zeros((20, 0));
    assert_eq!(model.predict_proba(x.view())?.to_vec(), vec![0.25; 20]);
    let contributions = model.contributions(x.view())?;
    assert_eq!(contributions.bias, 0.25);
    assert_eq!(contributions.per_feature.dim(), (20, 0));
    Ok(())
}

// --- the rank-coded layout and its plain fallback -------------------------------------------

/// A split of eight rows on `feature` at `threshold`, with children (left, right).
fn split_on(
    feature: u32,
    threshold: f64,
    children: (u32, u32),
    class_fractions: &[f64],
) -> Node<'_> {
    Node {
        split_feature: Some(feature),
        threshold,
        left_child: children.0,
        right_child: children.1,
        class_fractions,
        n_rows: 8,
        weighted_n_rows: 8.0,
        impurity: 0.5,
    }
}

fn tree_of(nodes: &[Node<'_>]) -> Result<Tree, ForestError> {
    let mut tree = Tree::new(2);
    for &node in nodes {
        tree.push_node(node)?;
    }
    Ok(tree)
}

fn forest_of(n_features: usize, trees: Vec<Tree>) -> RandomForest {
    RandomForest {
        n_features,
        n_classes: 2,
        trees,
        feature_importances: vec![0.0; n_features],
        oob_accuracy: None,
        oob_probabilities: None,
        training_probabilities: None,
        bin_edges: None,
    }
}

/// Values where `x <= threshold` is easy to get wrong: infinities, the largest and smallest
/// magnitudes, both zeros, a value and its successor, NaN.
const EDGE_VALUES: [f64; 13] = [
    f64::NEG_INFINITY,
    f64::MIN,
    -1.0,
    -5e-324,
    -0.0,
    0.0,
    5e-324,
    f64::MIN_POSITIVE,
    1.5,
    1.5000000000000002,
    f64::MAX,
    f64::INFINITY,
    f64::NAN,
];

/// Three trees on two features whose splits sit on the edge values (and one on NaN, which
/// sends every row right): the first stored as fitting stores a tree (children side by side),
/// the second in pre-order (left child next), the third a single leaf.
fn edge_threshold_trees() -> Result<Vec<Tree>, ForestError> {
    let side_by_side = tree_of(&[
        split_on(0, -0.0, (1, 2), &[0.5, 0.5]),
        split_on(0, f64::NEG_INFINITY, (3, 4), &[0.7, 0.3]),
        split_on(0, f64::INFINITY, (5, 6), &[0.4, 0.6]),
        leaf(&[0.875, 0.125]),
        split_on(1, f64::NAN, (7, 8), &[0.65, 0.35]),
        split_on(0, 0.0, (9, 10), &[0.45, 0.55]),
        leaf(&[0.125, 0.875]),
        leaf(&[1.0, 0.0]),
        split_on(1, 5e-324, (11, 12), &[0.6, 0.4]),
        leaf(&[0.8, 0.2]),
        split_on(1, -0.0, (13, 14), &[0.35, 0.65]),
        leaf(&[0.55, 0.45]),
        leaf(&[0.85, 0.15]),
        leaf(&[0.3, 0.7]),
        leaf(&[0.05, 0.95]),
    ])?;
    let pre_order = tree_of(&[
        split_on(1, f64::MAX, (1, 4), &[0.5, 0.5]),
        split_on(1, -5e-324, (2, 3), &[0.6, 0.4]),
        leaf(&[0.9, 0.1]),
        leaf(&[0.7, 0.3]),
        split_on(0, 1.5, (5, 6), &[0.2, 0.8]),
        leaf(&[0.4, 0.6]),
        leaf(&[0.1, 0.9]),
    ])?;
    let single_leaf = tree_of(&[leaf(&[0.75, 0.25])])?;
    Ok(vec![side_by_side, pre_order, single_leaf])
}

/// Every pair of edge values as a row of two features: 169 rows, one more than a multiple of
/// the lockstep widths.
fn edge_value_rows() -> Array2<f64> {
    Array2::from_shape_fn(
        (EDGE_VALUES.len() * EDGE_VALUES.len(), 2),
        |(row, feature)| {
            let index = if feature == 0 {
                row / EDGE_VALUES.len()
            } else {
                row % EDGE_VALUES.len()
            };
            EDGE_VALUES[index]
        },
    )
}

#[test]
fn rank_codes_send_every_value_where_comparing_it_with_the_threshold_does() -> TestResult {
    let trees = edge_threshold_trees()?;
    let model = forest_of(2, trees);
    assert!(FlatGroup::new(&model.trees, 0, 2, Purpose::Predictions, None)?.is_rank_coded());
    let x = edge_value_rows();
    assert_same_bits(
        &model.predict_proba(x.view())?,
        &reference_probabilities(&model.trees, &x),
        "probabilities",
    );
    let (bias, per_feature) = reference_contributions(&model.trees, &x);
    let contributions = model.contributions(x.view())?;
    assert_same_bits(&[contributions.bias], &[bias], "bias");
    assert_same_bits(&contributions.per_feature, &per_feature, "contributions");
    Ok(())
}

/// Per row, the leaf fractions of `trees` summed in tree order (what a group adds).
fn reference_leaf_sums(trees: &[Tree], x: &Array2<f64>) -> Vec<f64> {
    x.rows()
        .into_iter()
        .map(|row| {
            trees.iter().fold(0.0, |sum, tree| {
                sum + positive_fraction(tree, *reference_path(tree, row).last().unwrap_or(&0))
            })
        })
        .collect()
}

/// Per row, the leaf fractions of the trees that did not draw it (`in_bag[tree][row]`
/// false), summed in tree order, and how many.
fn reference_out_of_bag_sums(
    trees: &[Tree],
    in_bag: &[Vec<bool>],
    x: &Array2<f64>,
) -> (Vec<f64>, Vec<usize>) {
    x.rows()
        .into_iter()
        .enumerate()
        .map(|(row_index, row)| {
            let mut sum = 0.0;
            let mut count = 0;
            for (tree, in_bag) in trees.iter().zip(in_bag) {
                if !in_bag[row_index] {
                    sum += positive_fraction(tree, *reference_path(tree, row).last().unwrap_or(&0));
                    count += 1;
                }
            }
            (sum, count)
        })
        .unzip()
}

/// Asserts that `group`, laid out from `trees`, adds the reference walks' bits: leaf values,
/// out-of-bag leaf values and path contributions (before any division by the tree count).
fn assert_group_matches_reference(
    group: &FlatGroup<'_>,
    trees: &[Tree],
    x: &Array2<f64>,
) -> TestResult {
    assert_group_with_codes_matches_reference(group, None, trees, x)
}

/// [`assert_group_matches_reference`], the walks reading `coded` (rows coded for this or an
/// earlier group) when given.
fn assert_group_with_codes_matches_reference(
    group: &FlatGroup<'_>,
    coded: Option<&RowCodes>,
    trees: &[Tree],
    x: &Array2<f64>,
) -> TestResult {
    let rows = x.as_slice().ok_or("row-major rows")?;
    let mut sums = vec![0.0; x.nrows()];
    group.add_leaf_values(
        TaskRows {
            values: rows,
            coded,
            first_row: 0,
        },
        &mut sums,
    );
    assert_same_bits(&sums, &reference_leaf_sums(trees, x), "leaf sums");

    let mut rng = ChaCha8Rng::seed_from_u64(31);
    let in_bag: Vec<Vec<bool>> = trees
        .iter()
        .map(|_| (0..x.nrows()).map(|_| rng.random::<f64>() < 0.6).collect())
        .collect();
    let in_bag_views: Vec<&[bool]> = in_bag.iter().map(Vec::as_slice).collect();
    let mut all_sums = vec![0.0; x.nrows()];
    let mut out_of_bag_sums = vec![0.0; x.nrows()];
    let mut counts = vec![0; x.nrows()];
    group.add_leaf_values_and_out_of_bag(
        TaskRows {
            values: rows,
            coded,
            first_row: 0,
        },
        &in_bag_views,
        &mut all_sums,
        &mut out_of_bag_sums,
        &mut counts,
    );
    assert_same_bits(
        &all_sums,
        &reference_leaf_sums(trees, x),
        "leaf sums of the OOB walk",
    );
    let (expected_sums, expected_counts) = reference_out_of_bag_sums(trees, &in_bag, x);
    assert_same_bits(&out_of_bag_sums, &expected_sums, "out-of-bag sums");
    assert_eq!(counts, expected_counts, "out-of-bag counts");

    // The reference divides each row's sums by the tree count; so do these, as
    // `contributions_of` does (multiplying the reference back would not give the same bits).
    let mut per_feature = vec![0.0; x.len()];
    let mut path_end_sums = vec![0.0; x.nrows()];
    group.add_path_contributions(
        TaskRows {
            values: rows,
            coded,
            first_row: 0,
        },
        &mut per_feature,
        &mut path_end_sums,
    );
    per_feature
        .iter_mut()
        .for_each(|value| *value /= trees.len() as f64);
    let (_, expected) = reference_contributions(trees, x);
    assert_same_bits(&per_feature, &expected, "contributions");
    // The contribution walks end at the leaves a prediction reads, summed in the same order.
    assert_same_bits(
        &path_end_sums,
        &reference_leaf_sums(trees, x),
        "path-end sums",
    );
    Ok(())
}

#[test]
fn a_group_laid_out_plainly_adds_the_same_bits_as_a_rank_coded_one() -> TestResult {
    let (x, y) = planted_with_missing(1500, 5, 41);
    let (x_test, _) = planted_with_missing(101, 5, 42);
    let model = forest(ForestParams::new().n_trees(5).seed(7), &x, &y)?;
    let edge_trees = edge_threshold_trees()?;
    let edge_rows = edge_value_rows();
    for purpose in [Purpose::Predictions, Purpose::Contributions] {
        // Fitted features split on up to 255 bin edges; a limit of 10 forces the plain layout.
        for (limit, rank_coded) in [(usize::MAX, true), (10, false)] {
            let group = FlatGroup::with_rank_limit(&model.trees, 0, 5, purpose, limit)?;
            assert_eq!(
                group.is_rank_coded(),
                rank_coded,
                "{purpose:?}, limit {limit}"
            );
            assert_group_matches_reference(&group, &model.trees, &x_test)?;
        }
        for limit in [usize::MAX, 4, 3, 0] {
            let group = FlatGroup::with_rank_limit(&edge_trees, 0, 2, purpose, limit)?;
            // Each feature splits on four distinct thresholds: -inf, 0.0 (-0.0 is the same
            // one), 1.5 and inf; -5e-324, 0.0, 5e-324 and f64::MAX (a NaN threshold is none).
            assert_eq!(
                group.is_rank_coded(),
                limit >= 4,
                "{purpose:?}, limit {limit}"
            );
            assert_group_matches_reference(&group, &edge_trees, &edge_rows)?;
        }
    }
    Ok(())
}

#[test]
fn rows_coded_once_serve_every_later_group_whose_thresholds_the_table_holds() -> TestResult {
    let (x, y) = planted_with_missing(1500, 5, 43);
    let (x_test, _) = planted_with_missing(203, 5, 44);
    let rows = x_test.as_slice().ok_or("row-major rows")?;
    let model = forest(ForestParams::new().n_trees(6).seed(11), &x, &y)?;
    let (first, second) = model.trees.split_at(3);
    for purpose in [Purpose::Predictions, Purpose::Contributions] {
        let first_group = FlatGroup::new(first, 0, 5, purpose, None)?;
        // The second group's table is the first one's, or the first one's merged with its own.
        let second_group = FlatGroup::new(second, 3, 5, purpose, first_group.ranks())?;
        let coded = second_group.code_rows(rows, first_group.code_rows(rows, None));
        assert_group_with_codes_matches_reference(&second_group, coded.as_ref(), second, &x_test)?;
        // The merged table holds every threshold of the first trees: laid out against it, they
        // share it, and walk the rows coded for the second group, whose table has thresholds
        // their own lacks.
        let first_again = FlatGroup::new(first, 0, 5, purpose, second_group.ranks())?;
        let (shared, merged) = (
            first_again.ranks().ok_or("rank-coded")?,
            second_group.ranks().ok_or("rank-coded")?,
        );
        assert!(
            *first_group.ranks().ok_or("rank-coded")? != *merged,
            "{purpose:?}: the second trees split on thresholds the first do not"
        );
        assert!(
            std::sync::Arc::ptr_eq(&shared, &merged),
            "{purpose:?}: the table is shared"
        );
        let coded = first_again.code_rows(rows, coded);
        assert_group_with_codes_matches_reference(&first_again, coded.as_ref(), first, &x_test)?;

        // A task's walk reads its own rows' codes.
        let mut sums = vec![0.0; x_test.nrows() - 7];
        first_again.add_leaf_values(
            TaskRows {
                values: rows,
                coded: coded.as_ref(),
                first_row: 7,
            },
            &mut sums,
        );
        assert_same_bits(
            &sums,
            &reference_leaf_sums(first, &x_test)[7..],
            "sums from row 7",
        );
    }
    Ok(())
}

#[test]
fn a_fits_bin_edges_hold_every_threshold_its_trees_split_on() -> TestResult {
    let (x, y) = planted_with_missing(1500, 5, 47);
    let (x_test, _) = planted_with_missing(199, 5, 48);
    let checked = ForestParams::new().n_trees(6).seed(17).check()?;
    let data = check_data(x.view(), &y, None)?;
    let grown = grow_trees(&data, &checked.tree, 6, Some(x.nrows()), 17);
    let edges = Arc::new(ThresholdRanks::of_bin_edges(&grown.bin_edges));
    let mut fewer = 0;
    for (index, tree) in grown.trees.iter().map(|g| &g.tree).enumerate() {
        let trees = std::slice::from_ref(tree);
        for purpose in [Purpose::Predictions, Purpose::Contributions] {
            // Laid out against the edges, each tree keeps them as its table: a walk of the
            // whole forest codes its rows once.
            let group = FlatGroup::new(trees, index, 5, purpose, Some(Arc::clone(&edges)))?;
            assert!(
                Arc::ptr_eq(&group.ranks().ok_or("rank-coded")?, &edges),
                "tree {index}, {purpose:?}: laid out against the bin edges"
            );
            assert_group_matches_reference(&group, trees, &x_test)?;
        }
        let own = FlatGroup::new(trees, index, 5, Purpose::Predictions, None)?;
        fewer += usize::from(*own.ranks().ok_or("rank-coded")? != *edges);
    }
    // The edges are more than a tree splits on: alone, the trees would have tables of their own.
    assert!(
        fewer > 0,
        "some tree splits on fewer thresholds than the bins have"
    );
    Ok(())
}

#[test]
fn a_forest_laid_out_once_for_contributions_gives_the_same_bits_without_its_trees() -> TestResult {
    let (x, y) = planted_with_missing(1500, 5, 45);
    let (x_test, _) = planted_with_missing(211, 5, 46);
    let model = forest(ForestParams::new().n_trees(7).seed(13), &x, &y)?;
    let expected = model.contributions(x_test.view())?;
    let largest = model.trees.iter().map(Tree::len).max().unwrap_or(0);
    let all_nodes: usize = model.trees.iter().map(Tree::len).sum();
    for group_nodes in [1, largest, 2 * largest + 1, all_nodes] {
        let layout = model
            .clone()
            .into_contribution_layout_in_groups(group_nodes)?;
        let what = format!("groups of {group_nodes} nodes");
        // Its groups share one table, whatever their trees split on: a block's rows are coded
        // once.
        assert_eq!(layout.distinct_tables(), 1, "{what}");
        // Two calls, as two score blocks: the layout is walked again, not consumed.
        for _ in 0..2 {
            let laid_out = layout.contributions(x_test.view())?;
            assert_same_bits(&[laid_out.bias], &[expected.bias], &format!("bias, {what}"));
            assert_same_bits(
                &laid_out.per_feature,
                &expected.per_feature,
                &format!("contributions, {what}"),
            );
            assert_same_bits(
                &laid_out.probabilities,
                &expected.probabilities,
                &format!("probabilities, {what}"),
            );
        }
        assert!(matches!(
            layout.contributions(x_test.slice(ndarray::s![.., ..4])),
            Err(ForestError::FeatureCountMismatch {
                expected: 5,
                found: 4
            })
        ));
    }
    Ok(())
}

#[test]
fn a_model_with_more_features_than_a_u16_numbers_predicts_plainly() -> TestResult {
    let n_features = usize::from(u16::MAX) + 1;
    let last = u32::from(u16::MAX);
    let tree = tree_of(&[
        split_on(last, 0.5, (1, 2), &[0.5, 0.5]),
        split_on(0, -1.0, (3, 4), &[0.25, 0.75]),
        leaf(&[0.9, 0.1]),
        leaf(&[0.6, 0.4]),
        leaf(&[0.2, 0.8]),
    ])?;
    let model = forest_of(n_features, vec![tree]);
    assert!(
        !FlatGroup::new(&model.trees, 0, n_features, Purpose::Predictions, None)?.is_rank_coded()
    );
    let mut x = Array2::zeros((9, n_features));
    for (row, values) in [(1, (-2.0, 0.0)), (2, (0.0, 1.0)), (3, (f64::NAN, f64::NAN))] {
        x[[row, 0]] = values.0;
        x[[row, n_features - 1]] = values.1;
    }
    assert_same_bits(
        &model.predict_proba(x.view())?,
        &reference_probabilities(&model.trees, &x),
        "probabilities",
    );
    let (_, per_feature) = reference_contributions(&model.trees, &x);
    assert_same_bits(
        &model.contributions(x.view())?.per_feature,
        &per_feature,
        "contributions",
    );
    Ok(())
}

/// `tree` renumbered in pre-order (a left child right after its parent), as other tools store
/// trees, with the same nodes.
fn in_pre_order(tree: &Tree) -> Result<Tree, Box<dyn std::error::Error + Send + Sync>> {
    let mut order = Vec::with_capacity(tree.len());
    let mut pending = vec![0];
    while let Some(index) = pending.pop() {
        order.push(index);
        let node = tree.node(index).ok_or("a child inside the tree")?;
        if node.split_feature.is_some() {
            pending.push(node.right_child as usize);
            pending.push(node.left_child as usize);
        }
    }
    let mut new_index = vec![0; tree.len()];
    for (new, &old) in order.iter().enumerate() {
        new_index[old] = new as u32;
    }
    let mut renumbered = Tree::new(2);
    for &old in &order {
        let mut node = tree.node(old).ok_or("a node of the tree")?;
        if node.split_feature.is_some() {
            node.left_child = new_index[node.left_child as usize];
            node.right_child = new_index[node.right_child as usize];
        }
        renumbered.push_node(node)?;
    }
    Ok(renumbered)
}

#[test]
fn a_tree_stored_in_another_order_predicts_the_same_bits() -> TestResult {
    let (x, y) = planted_with_missing(2000, 6, 51);
    let (x_test, _) = planted_with_missing(300, 6, 52);
    let model = forest(ForestParams::new().n_trees(4).seed(9), &x, &y)?;
    let mut renumbered = model.clone();
    renumbered.trees = model
        .trees
        .iter()
        .map(in_pre_order)
        .collect::<Result<_, _>>()?;
    assert_ne!(renumbered.trees, model.trees, "the nodes moved");
    assert_forest_matches_reference(&renumbered, &x_test)?;
    assert_same_bits(
        &renumbered.predict_proba(x_test.view())?,
        &model.predict_proba(x_test.view())?,
        "probabilities of the renumbered trees",
    );
    Ok(())
}

#[test]
fn a_fitted_forest_is_laid_out_rank_coded_in_8_bytes_a_node_for_predictions() -> TestResult {
    let (x, y) = planted(2000, 6, 61);
    let model = forest(ForestParams::new().n_trees(3), &x, &y)?;
    let layout =
        |purpose, rank_limit| FlatGroup::with_rank_limit(&model.trees, 0, 6, purpose, rank_limit);
    let for_predictions = layout(Purpose::Predictions, usize::MAX)?;
    assert!(for_predictions.is_rank_coded());
    // An 8-byte node (left child, feature, bound); leaf values are read from the stored tree.
    assert_eq!(for_predictions.bytes_per_node(), 8.0);
    // Contributions read a fraction at every step: 8 more bytes, copied next to the nodes.
    assert_eq!(
        layout(Purpose::Contributions, usize::MAX)?.bytes_per_node(),
        16.0
    );
    // The plain layout's node is 16 bytes (threshold, left child, feature).
    assert_eq!(layout(Purpose::Predictions, 0)?.bytes_per_node(), 16.0);
    assert_eq!(layout(Purpose::Contributions, 0)?.bytes_per_node(), 24.0);
    Ok(())
}

// --- stored trees: compact, and the saved format unchanged ----------------------------------

/// What a binary tree may hold per node: the split and counts (feature, two children, row
/// count: 4 × 4 bytes; threshold, weighted rows, impurity: 3 × 8) and two class fractions
/// (2 × 8), with no per-node allocation and no spare capacity.
const STORED_BYTES_PER_BINARY_NODE: usize = 4 * 4 + 3 * 8 + 2 * 8;

fn assert_compact(tree: &Tree, what: &str) {
    assert!(
        tree.heap_bytes() <= tree.len() * STORED_BYTES_PER_BINARY_NODE,
        "{what}: {} bytes for {} nodes, {:.1} per node instead of at most {}",
        tree.heap_bytes(),
        tree.len(),
        tree.heap_bytes() as f64 / tree.len() as f64,
        STORED_BYTES_PER_BINARY_NODE
    );
}

#[test]
fn fitted_and_loaded_trees_hold_56_bytes_per_node() -> TestResult {
    let (x, y) = planted(3000, 6, 21);
    let model = forest(ForestParams::new().n_trees(4), &x, &y)?;
    let loaded: RandomForest = serde_json::from_str(&serde_json::to_string(&model)?)?;
    for (fitted, loaded) in model.trees.iter().zip(&loaded.trees) {
        assert!(fitted.len() > 100, "full-depth trees on 3000 rows");
        assert_compact(fitted, "fitted tree");
        assert_compact(loaded, "tree loaded from JSON");
        // Node by node, as a tree is loaded from Parquet.
        let mut pushed = Tree::new(2);
        for node in fitted.nodes() {
            pushed.push_node(node)?;
        }
        pushed.shrink_to_fit();
        assert_compact(&pushed, "tree pushed node by node");
        assert_eq!(&pushed, fitted);
    }
    Ok(())
}

#[test]
fn a_tree_saves_as_a_list_of_nodes_with_their_field_names() -> TestResult {
    let mut tree = Tree::new(2);
    tree.push_node(Node {
        split_feature: Some(1),
        threshold: 0.5,
        left_child: 1,
        right_child: 2,
        class_fractions: &[0.5, 0.5],
        n_rows: 8,
        weighted_n_rows: 8.0,
        impurity: 0.5,
    })?;
    tree.push_node(leaf(&[1.0, 0.0]))?;
    tree.push_node(leaf(&[0.0, 1.0]))?;
    let json = serde_json::to_string(&tree)?;
    assert_eq!(
        json,
        concat!(
            r#"{"nodes":["#,
            r#"{"split_feature":1,"threshold":0.5,"left_child":1,"right_child":2,"#,
            r#""class_fractions":[0.5,0.5],"n_rows":8,"weighted_n_rows":8.0,"impurity":0.5},"#,
            r#"{"split_feature":null,"threshold":0.0,"left_child":0,"right_child":0,"#,
            r#""class_fractions":[1.0,0.0],"n_rows":4,"weighted_n_rows":4.0,"impurity":0.0},"#,
            r#"{"split_feature":null,"threshold":0.0,"left_child":0,"right_child":0,"#,
            r#""class_fractions":[0.0,1.0],"n_rows":4,"weighted_n_rows":4.0,"impurity":0.0}"#,
            r#"]}"#
        )
    );
    let loaded: Tree = serde_json::from_str(&json)?;
    assert_eq!(loaded, tree);
    Ok(())
}

#[test]
fn a_node_with_another_class_count_than_its_tree_is_refused() -> TestResult {
    let mut tree = Tree::new(2);
    tree.push_node(leaf(&[0.5, 0.5]))?;
    let refused = tree.push_node(leaf(&[0.2, 0.3, 0.5]));
    assert!(matches!(
        refused,
        Err(ForestError::ClassFractionCountMismatch {
            node: 1,
            expected: 2,
            found: 3
        })
    ));
    assert_eq!(tree.len(), 1, "a refused node is not stored");
    // Loading a saved tree applies the same rule, its first node setting the class count.
    let mixed = r#"{"nodes":[
        {"split_feature":0,"threshold":0.5,"left_child":1,"right_child":2,"class_fractions":[0.5,0.5],"n_rows":2,"weighted_n_rows":2.0,"impurity":0.5},
        {"split_feature":null,"threshold":0.0,"left_child":0,"right_child":0,"class_fractions":[1.0],"n_rows":1,"weighted_n_rows":1.0,"impurity":0.0}
    ]}"#;
    let error = serde_json::from_str::<Tree>(mixed)
        .err()
        .ok_or("a mixed tree is refused")?;
    assert!(
        error
            .to_string()
            .starts_with("node 1 has 1 class fractions, but its tree has 2 classes"),
        "{error}"
    );
    Ok(())
}

#[test]
fn a_split_on_the_feature_index_that_marks_leaves_is_refused() {
    let mut tree = Tree::new(2);
    let refused = tree.push_node(Node {
        split_feature: Some(u32::MAX),
        ..leaf(&[0.5, 0.5])
    });
    assert!(matches!(
        refused,
        Err(ForestError::SplitFeatureMarksLeaves { node: 0 })
    ));
    assert!(tree.is_empty());
}
