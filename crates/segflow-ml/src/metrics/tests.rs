use super::*;
use ndarray::Array2;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::forest::{ForestParams, RandomForest};

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// The worked example used throughout: two negatives (0.1, 0.4), two positives (0.35, 0.8).
const LABELS: [usize; 4] = [0, 0, 1, 1];
const SCORES: [f64; 4] = [0.1, 0.4, 0.35, 0.8];

/// A sample with many tied scores, whose reference values come from scikit-learn 1.9.1
/// (`roc_auc_score`, `average_precision_score`, `log_loss`, `brier_score_loss`).
const TIED_LABELS: [usize; 20] = [1, 0, 0, 1, 1, 0, 1, 0, 0, 0, 1, 0, 1, 1, 0, 0, 0, 1, 0, 0];
const TIED_SCORES: [f64; 20] = [
    0.9, 0.1, 0.35, 0.35, 0.8, 0.35, 0.6, 0.2, 0.6, 0.05, 0.7, 0.5, 0.35, 0.95, 0.4, 0.1, 0.3, 0.6,
    0.25, 0.45,
];

fn assert_close(actual: f64, expected: f64) {
    assert!(
        (actual - expected).abs() < 1e-12,
        "expected {expected}, got {actual}"
    );
}

fn assert_all_close(actual: &[f64], expected: &[f64]) {
    assert_eq!(actual.len(), expected.len(), "{actual:?} vs {expected:?}");
    for (a, e) in actual.iter().zip(expected) {
        assert!(
            a == e || (a - e).abs() < 1e-12,
            "{actual:?} vs {expected:?}"
        );
    }
}

// --- ranking ---------------------------------------------------------------------------------

#[test]
fn roc_auc_is_the_share_of_correctly_ordered_positive_negative_pairs() -> TestResult {
    // Pairs (positive, negative): (0.35, 0.1) right, (0.35, 0.4) wrong, (0.8, 0.1) right,
    // (0.8, 0.4) right → 3 of 4.
    assert_close(roc_auc(&LABELS, &SCORES)?, 0.75);
    Ok(())
}

#[test]
fn roc_auc_counts_a_tied_pair_as_half() -> TestResult {
    // Positives 0.5 and 0.9, negatives 0.5 and 0.2: (0.5, 0.5) tie = ½, the other three right
    // → 3.5 / 4.
    assert_close(roc_auc(&[0, 1, 0, 1], &[0.5, 0.5, 0.2, 0.9])?, 0.875);
    Ok(())
}

#[test]
fn roc_auc_accepts_scores_that_are_not_probabilities() -> TestResult {
    // Only the order matters: the worked example shifted and scaled out of [0, 1].
    let logits: Vec<f64> = SCORES.iter().map(|s| 10.0 * s - 3.0).collect();
    assert_close(roc_auc(&LABELS, &logits)?, 0.75);
    Ok(())
}

#[test]
fn roc_curve_has_the_origin_at_infinity_then_one_point_per_distinct_score() -> TestResult {
    // Thresholds 0.8 ≥ → {pos}; 0.4 → {pos, neg}; 0.35 → 2 pos 1 neg; 0.1 → everyone.
    let curve = roc_curve(&LABELS, &SCORES)?;
    assert_all_close(&curve.thresholds, &[f64::INFINITY, 0.8, 0.4, 0.35, 0.1]);
    assert_all_close(&curve.fpr, &[0.0, 0.0, 0.5, 0.5, 1.0]);
    assert_all_close(&curve.tpr, &[0.0, 0.5, 0.5, 1.0, 1.0]);
    // Tied scores make a single point.
    let tied = roc_curve(&[0, 1, 0, 1], &[0.5, 0.5, 0.2, 0.9])?;
    assert_all_close(&tied.thresholds, &[f64::INFINITY, 0.9, 0.5, 0.2]);
    Ok(())
}

#[test]
fn average_precision_is_the_step_sum_of_precision_at_each_recall_gain() -> TestResult {
    // Thresholds from the top: 0.8 → P 1, R ½ (gain ½); 0.4 → P ½, R ½ (no gain);
    // 0.35 → P ⅔, R 1 (gain ½); 0.1 → no gain. AP = ½·1 + ½·⅔ = 5/6.
    // (The trapezoidal area under the same points would be 0.7917.)
    assert_close(pr_auc(&LABELS, &SCORES)?, 5.0 / 6.0);
    Ok(())
}

#[test]
fn average_precision_treats_tied_scores_as_one_threshold() -> TestResult {
    // 0.9 is shared by a positive and a negative: P ½ at R ½; then 0.5 → P ⅔ at R 1.
    // AP = ½·½ + ½·⅔ = 7/12.
    assert_close(pr_auc(&[1, 0, 1, 0], &[0.9, 0.9, 0.5, 0.1])?, 7.0 / 12.0);
    Ok(())
}

#[test]
fn pr_curve_uses_scikit_learns_layout_increasing_thresholds_then_the_recall_zero_point()
-> TestResult {
    let curve = pr_curve(&LABELS, &SCORES)?;
    assert_all_close(&curve.thresholds, &[0.1, 0.35, 0.4, 0.8]);
    assert_all_close(&curve.precision, &[0.5, 2.0 / 3.0, 0.5, 1.0, 1.0]);
    assert_all_close(&curve.recall, &[1.0, 1.0, 0.5, 0.5, 0.0]);
    Ok(())
}

#[test]
fn pr_metrics_need_positives_but_not_negatives() -> TestResult {
    assert_close(pr_auc(&[1, 1], &[0.2, 0.7])?, 1.0);
    assert_eq!(
        pr_auc(&[0, 0], &[0.2, 0.7]),
        Err(MetricError::NoPositives {
            metric: "average precision"
        })
    );
    Ok(())
}

#[test]
fn ranking_metrics_match_scikit_learn_on_a_sample_with_ties() -> TestResult {
    assert_close(roc_auc(&TIED_LABELS, &TIED_SCORES)?, 0.8854166666666667);
    assert_close(pr_auc(&TIED_LABELS, &TIED_SCORES)?, 0.8571428571428571);
    Ok(())
}

// --- probability quality ---------------------------------------------------------------------

#[test]
fn log_loss_is_the_mean_negative_log_likelihood() -> TestResult {
    // −(ln 0.9 + ln 0.6 + ln 0.35 + ln 0.8) / 4
    //   = (0.10536 + 0.51083 + 1.04982 + 0.22314) / 4 = 0.47229
    assert_close(log_loss(&LABELS, &SCORES)?, 0.47228795380917615);
    assert_close(log_loss(&TIED_LABELS, &TIED_SCORES)?, 0.42834745321881007);
    Ok(())
}

#[test]
fn log_loss_clips_a_certain_mistake_at_1e_minus_15() -> TestResult {
    // A positive scored 0 costs −ln(1e-15) = 34.539, not infinity.
    assert_close(log_loss(&[1], &[0.0])?, 34.538776394910684);
    // A negative scored 1 is clipped at 1 − 1e-15 (in f64, 1 − 1.11e-15): −ln(1.11e-15).
    assert_close(log_loss(&[0], &[1.0])?, -(1.0 - (1.0 - LOG_LOSS_EPS)).ln());
    assert!(log_loss(&[0], &[1.0])? > 34.0);
    // A correct certain prediction costs −ln(1 − 1e-15) ≈ 1e-15, not 0.
    let certain = log_loss(&[1, 0], &[1.0, 0.0])?;
    assert!(certain > 0.0 && certain < 1e-14, "{certain}");
    Ok(())
}

#[test]
fn brier_score_is_the_mean_squared_error_of_the_probabilities() -> TestResult {
    // (0.1² + 0.4² + 0.65² + 0.2²) / 4 = (0.01 + 0.16 + 0.4225 + 0.04) / 4 = 0.158125
    assert_close(brier_score(&LABELS, &SCORES)?, 0.158125);
    assert_close(brier_score(&TIED_LABELS, &TIED_SCORES)?, 0.137);
    Ok(())
}

#[test]
fn probability_metrics_accept_a_single_class() -> TestResult {
    assert_close(brier_score(&[0, 0], &[0.0, 0.5])?, 0.125);
    assert_close(log_loss(&[0, 0], &[0.5, 0.5])?, std::f64::consts::LN_2);
    Ok(())
}

// --- decisions at a threshold ----------------------------------------------------------------

#[test]
fn a_score_equal_to_the_threshold_is_predicted_positive() -> TestResult {
    // At 0.35: 0.35 (pos) and 0.8 (pos) and 0.4 (neg) are ≥ 0.35; 0.1 (neg) is not.
    let matrix = ConfusionMatrix::at_threshold(&LABELS, &SCORES, 0.35)?;
    assert_eq!(
        matrix,
        ConfusionMatrix {
            tp: 2,
            fp: 1,
            tn: 1,
            fn_: 0
        }
    );
    assert_close(matrix.accuracy(), 0.75);
    assert_close(matrix.precision(), 2.0 / 3.0);
    assert_close(matrix.recall(), 1.0);
    assert_close(matrix.specificity(), 0.5);
    // F1 = 2·2 / (2·2 + 1 + 0) = 0.8; balanced accuracy = (1 + ½) / 2.
    assert_close(matrix.f1(), 0.8);
    assert_close(matrix.balanced_accuracy(), 0.75);
    Ok(())
}

#[test]
fn rates_that_divide_by_zero_are_zero() -> TestResult {
    // Nothing predicted positive, no positives at all.
    let matrix = ConfusionMatrix::at_threshold(&[0, 0, 0], &[0.2, 0.3, 0.9], f64::INFINITY)?;
    assert_eq!(matrix.tn, 3);
    assert_eq!(matrix.precision(), 0.0);
    assert_eq!(matrix.recall(), 0.0);
    assert_eq!(matrix.f1(), 0.0);
    // Balanced accuracy averages over the classes present: specificity alone.
    assert_close(matrix.balanced_accuracy(), 1.0);
    let empty = ConfusionMatrix {
        tp: 0,
        fp: 0,
        tn: 0,
        fn_: 0,
    };
    assert_eq!(empty.accuracy(), 0.0);
    assert_eq!(empty.balanced_accuracy(), 0.0);
    Ok(())
}

#[test]
fn confusion_matrix_serialises_fn_under_its_plain_name() -> TestResult {
    let matrix = ConfusionMatrix::at_threshold(&LABELS, &SCORES, 0.5)?;
    assert_eq!(
        serde_json::to_string(&matrix)?,
        r#"{"tp":1,"fp":0,"tn":2,"fn":1}"#
    );
    Ok(())
}

#[test]
fn fixed_policy_returns_its_threshold() -> TestResult {
    assert_eq!(
        choose_threshold(ThresholdPolicy::Fixed(0.3), &LABELS, &SCORES)?,
        0.3
    );
    Ok(())
}

#[test]
fn max_f1_picks_the_score_with_the_best_f1() -> TestResult {
    // F1 = 2tp / (tp + fp + 2) at 0.8: 2/3; 0.4: 2/4; 0.35: 4/5; 0.1: 4/6 → 0.35.
    assert_eq!(
        choose_threshold(ThresholdPolicy::MaxF1, &LABELS, &SCORES)?,
        0.35
    );
    Ok(())
}

#[test]
fn max_f1_breaks_a_tie_towards_the_higher_threshold() -> TestResult {
    // Ranked labels 1, 0, 0, 1, 0 (2 positives): F1 at 0.9 = 2/(1+0+2) = ⅔; at 0.7 = ½;
    // at 0.6 = 0.4; at 0.5 = 4/(2+2+2) = ⅔; at 0.2 = 4/7. ⅔ twice → the higher, 0.9.
    let labels = [1, 0, 0, 1, 0];
    let scores = [0.9, 0.7, 0.6, 0.5, 0.2];
    assert_eq!(
        choose_threshold(ThresholdPolicy::MaxF1, &labels, &scores)?,
        0.9
    );
    Ok(())
}

#[test]
fn target_recall_picks_the_highest_threshold_reaching_the_recall() -> TestResult {
    // Recall at 0.8: ½; at 0.4: ½; at 0.35: 1; at 0.1: 1.
    let choose = |target| choose_threshold(ThresholdPolicy::TargetRecall(target), &LABELS, &SCORES);
    assert_eq!(choose(0.5)?, 0.8);
    assert_eq!(choose(0.6)?, 0.35);
    assert_eq!(choose(1.0)?, 0.35);
    // Recall exactly equal to a decimal target counts as reaching it: 7 of 10 is 0.7.
    let labels = [1; 10];
    let scores = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1];
    assert_eq!(
        choose_threshold(ThresholdPolicy::TargetRecall(0.7), &labels, &scores)?,
        0.4
    );
    Ok(())
}

#[test]
fn threshold_policies_reject_what_they_cannot_use() {
    assert_eq!(
        choose_threshold(ThresholdPolicy::TargetRecall(0.0), &LABELS, &SCORES),
        Err(MetricError::TargetRecallOutOfRange(0.0))
    );
    assert_eq!(
        choose_threshold(ThresholdPolicy::TargetRecall(1.5), &LABELS, &SCORES),
        Err(MetricError::TargetRecallOutOfRange(1.5))
    );
    assert!(matches!(
        choose_threshold(ThresholdPolicy::Fixed(f64::NAN), &LABELS, &SCORES),
        Err(MetricError::NanThreshold(_))
    ));
    assert_eq!(
        choose_threshold(ThresholdPolicy::MaxF1, &[0, 0], &[0.1, 0.2]).map_err(|e| e.to_string()),
        Err("no label is 1: the MaxF1 threshold policy is undefined without a positive row".into())
    );
}

// --- lift and calibration --------------------------------------------------------------------

#[test]
fn lift_table_ranks_by_score_and_ends_with_all_positives_captured() -> TestResult {
    // 20 rows, score of row i = i / 20, so decile 1 is rows 19 and 18. Positives: rows 19, 18,
    // 15 and 3 (overall rate 4/20 = 0.2).
    let scores: Vec<f64> = (0..20).map(|i| i as f64 / 20.0).collect();
    let mut labels = vec![0; 20];
    for row in [19, 18, 15, 3] {
        labels[row] = 1;
    }
    let table = lift_by_decile(&labels, &scores)?;
    assert_eq!(table.len(), 10);
    let positives: Vec<usize> = table.iter().map(|r| r.positives).collect();
    assert_eq!(positives, [2, 0, 1, 0, 0, 0, 0, 0, 1, 0]);
    // Decile 1: rate 2/2 = 1, lift 1 / 0.2 = 5, half of the positives captured.
    assert_eq!(table[0].decile, 1);
    assert_close(table[0].rate, 1.0);
    assert_close(table[0].lift, 5.0);
    assert_close(table[0].cumulative_gain, 0.5);
    // Decile 3 (rows 15, 14): rate ½, lift 2.5, gains ¾.
    assert_close(table[2].lift, 2.5);
    assert_close(table[2].cumulative_gain, 0.75);
    assert_eq!(table[9].cumulative_gain, 1.0);
    Ok(())
}

#[test]
fn decile_sizes_follow_numpy_array_split() -> TestResult {
    // 23 = 10·2 + 3: the first three deciles hold 3 rows, the others 2.
    let labels: Vec<usize> = (0..23).map(|i| usize::from(i % 4 == 0)).collect();
    let scores: Vec<f64> = (0..23).map(|i| (i % 7) as f64 / 7.0).collect();
    let table = lift_by_decile(&labels, &scores)?;
    let sizes: Vec<usize> = table.iter().map(|r| r.customers).collect();
    assert_eq!(sizes, [3, 3, 3, 2, 2, 2, 2, 2, 2, 2]);
    assert_eq!(sizes.iter().sum::<usize>(), 23);
    assert_eq!(
        table.iter().map(|r| r.positives).sum::<usize>(),
        labels.iter().sum::<usize>()
    );
    assert_eq!(table[9].cumulative_gain, 1.0);
    // Fewer rows than deciles: the last deciles are empty, with rate and lift 0.
    let small = lift_by_decile(&[1, 0, 1], &[0.9, 0.5, 0.1])?;
    let sizes: Vec<usize> = small.iter().map(|r| r.customers).collect();
    assert_eq!(sizes, [1, 1, 1, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!((small[5].rate, small[5].lift), (0.0, 0.0));
    assert_eq!(small[9].cumulative_gain, 1.0);
    Ok(())
}

#[test]
fn tied_scores_are_split_across_deciles_by_row_index() -> TestResult {
    // Every score equal: deciles take rows in index order (two rows each), so the positive in
    // row 0 lands in decile 1 and the one in row 5 in decile 3.
    let mut labels = vec![0; 20];
    labels[0] = 1;
    labels[5] = 1;
    let table = lift_by_decile(&labels, &[0.5; 20])?;
    let positives: Vec<usize> = table.iter().map(|r| r.positives).collect();
    assert_eq!(positives, [1, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
    assert_close(table[0].cumulative_gain, 0.5);
    Ok(())
}

#[test]
fn calibration_bins_are_half_open_except_the_last() -> TestResult {
    let scores = [0.0, 0.05, 0.1, 0.15, 0.3, 0.95, 1.0];
    let labels = [0, 0, 1, 0, 1, 1, 1];
    let table = calibration(&labels, &scores, 10)?;
    assert_eq!(table.len(), 10);
    let counts: Vec<usize> = table.iter().map(|b| b.customers).collect();
    // 0.1 opens bin 2 and 0.3 opens bin 4; 1.0 closes bin 10.
    assert_eq!(counts, [2, 2, 0, 1, 0, 0, 0, 0, 0, 2]);
    assert_eq!(counts.iter().sum::<usize>(), scores.len());
    assert_eq!(
        (table[1].bin, table[1].lower, table[1].upper),
        (2, 0.1, 0.2)
    );
    assert_eq!(table[9].upper, 1.0);
    // Bin 2 holds 0.1 (positive) and 0.15 (negative): mean score 0.125, rate ½.
    assert_close(table[1].mean_score.ok_or("bin 2 is not empty")?, 0.125);
    assert_eq!(table[1].positive_rate, Some(0.5));
    // Bin 10 holds 0.95 and 1.0, both positive.
    assert_close(table[9].mean_score.ok_or("bin 10 is not empty")?, 0.975);
    assert_eq!(table[9].positive_rate, Some(1.0));
    // An empty bin reports no mean rather than a fake 0.
    assert_eq!((table[2].mean_score, table[2].positive_rate), (None, None));
    Ok(())
}

#[test]
fn every_probability_falls_in_the_bin_whose_edges_contain_it() -> TestResult {
    // Each edge i/bins and the doubles either side of it, checked bit for bit against the
    // reported lower/upper. For these bin counts `score × bins` rounds across an edge for some
    // of them (e.g. 1/49 × 49 = 0.999…), so a plain floor would misplace them.
    for bins in [3, 7, 10, 13, 49] {
        let scores: Vec<f64> = (0..=bins)
            .map(|edge| bin_edge(edge, bins))
            .flat_map(|edge| [edge.next_down(), edge, edge.next_up()])
            .filter(|score| (0.0..=1.0).contains(score))
            .collect();
        let labels = vec![0; scores.len()];
        let table = calibration(&labels, &scores, bins)?;
        assert_eq!(
            table.iter().map(|b| b.customers).sum::<usize>(),
            scores.len()
        );
        for &score in &scores {
            let bin = &table[bin_of(score, bins)];
            let inside = score >= bin.lower && (score < bin.upper || bin.bin == bins);
            assert!(inside, "{score} in bin {bin:?}");
        }
    }
    Ok(())
}

// --- permutation importance ------------------------------------------------------------------

/// Column 0 decides the label (up to 10 % flips), columns 1 and 2 are noise.
fn decisive_and_noise(rows: usize, seed: u64) -> (Array2<f64>, Vec<usize>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let x = Array2::from_shape_fn((rows, 3), |_| rng.random_range(0.0..1.0));
    let labels = x
        .column(0)
        .iter()
        .map(|&v| usize::from(v > 0.5) ^ usize::from(rng.random::<f64>() < 0.1))
        .collect();
    (x, labels)
}

#[test]
fn shuffling_an_ignored_column_costs_nothing_and_the_decisive_one_costs_much() -> TestResult {
    let (x, labels) = decisive_and_noise(500, 1);
    // A model that reads column 0 only.
    let predict = |features: ArrayView2<'_, f64>| features.column(0).to_vec();
    let importances = permutation_importance(predict, x.view(), &labels, 5, 3)?;
    assert_eq!(importances.len(), 3);
    // Baseline AUC ≈ 0.9; shuffled, column 0 ranks at random (≈ 0.5).
    assert!(importances[0].mean_drop > 0.3, "{importances:?}");
    assert!(importances[0].std_drop > 0.0);
    for ignored in &importances[1..] {
        assert_eq!(
            (ignored.mean_drop, ignored.std_drop),
            (0.0, 0.0),
            "{importances:?}"
        );
    }
    Ok(())
}

#[test]
fn a_fitted_forest_gets_near_zero_importance_for_noise_columns() -> TestResult {
    let (x_train, y_train) = decisive_and_noise(1000, 2);
    let (x_test, y_test) = decisive_and_noise(600, 3);
    let params = ForestParams::new().n_trees(25).seed(5).check()?;
    let model = RandomForest::fit(&params, x_train.view(), &y_train, None)?;
    // A failed prediction returns no scores, which permutation_importance reports.
    let predict = |features: ArrayView2<'_, f64>| {
        model
            .predict_proba(features)
            .map(|p| p.to_vec())
            .unwrap_or_default()
    };
    let importances = permutation_importance(predict, x_test.view(), &y_test, 5, 11)?;
    assert!(importances[0].mean_drop > 0.2, "{importances:?}");
    for noise in &importances[1..] {
        assert!(noise.mean_drop.abs() < 0.03, "{importances:?}");
    }
    Ok(())
}

#[test]
fn permutation_importance_is_the_same_with_one_or_three_threads() -> TestResult {
    let (x, labels) = decisive_and_noise(300, 4);
    let predict = |features: ArrayView2<'_, f64>| {
        features
            .rows()
            .into_iter()
            .map(|r| r[0] + 0.3 * r[1] + 0.1 * r[2])
            .collect::<Vec<f64>>()
    };
    let run =
        |threads: usize| -> Result<Vec<Importance>, Box<dyn std::error::Error + Send + Sync>> {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()?;
            Ok(pool.install(|| permutation_importance(predict, x.view(), &labels, 4, 9))?)
        };
    let one = run(1)?;
    assert_eq!(one, run(3)?);
    // Same seed, same result; another seed shuffles differently.
    assert_eq!(
        one,
        permutation_importance(predict, x.view(), &labels, 4, 9)?
    );
    assert_ne!(
        one,
        permutation_importance(predict, x.view(), &labels, 4, 10)?
    );
    Ok(())
}

/// One prediction per (column, repeat), from the documented shuffle streams: what
/// `permutation_importance` must equal however it batches its predictions.
fn permutation_importance_one_call_per_repeat(
    predict: impl Fn(ArrayView2<'_, f64>) -> Vec<f64>,
    x: ArrayView2<'_, f64>,
    labels: &[usize],
    n_repeats: usize,
    seed: u64,
) -> Vec<Importance> {
    let baseline = roc_auc(labels, &predict(x)).expect("baseline AUC");
    (0..x.ncols())
        .map(|column| {
            let drops: Vec<f64> = (0..n_repeats)
                .map(|repeat| {
                    let mut rng = ChaCha8Rng::seed_from_u64(seed);
                    rng.set_stream(((column as u64) << 32) | repeat as u64);
                    let mut values = x.column(column).to_vec();
                    values.shuffle(&mut rng);
                    let mut shuffled = x.to_owned();
                    shuffled.column_mut(column).assign(&Array1::from(values));
                    baseline - roc_auc(labels, &predict(shuffled.view())).expect("AUC")
                })
                .collect();
            let mean = drops.iter().sum::<f64>() / n_repeats as f64;
            let variance =
                drops.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / n_repeats as f64;
            Importance {
                mean_drop: mean,
                std_drop: variance.sqrt(),
            }
        })
        .collect()
}

#[test]
fn stacking_the_repeats_of_a_column_into_one_prediction_changes_no_importance() -> TestResult {
    let predict = |features: ArrayView2<'_, f64>| {
        features
            .rows()
            .into_iter()
            .map(|r| r[0] + 0.3 * r[1] + 0.1 * r[2])
            .collect::<Vec<f64>>()
    };
    // 300 rows: all 5 repeats in one call. 30,000 rows: two per call, then the last alone.
    for rows in [300, 30_000] {
        let (x, labels) = decisive_and_noise(rows, 6);
        assert_eq!(
            permutation_importance(predict, x.view(), &labels, 5, 8)?,
            permutation_importance_one_call_per_repeat(predict, x.view(), &labels, 5, 8),
            "{rows} rows"
        );
    }
    Ok(())
}

#[test]
fn permutation_importance_checks_its_inputs() {
    let x = Array2::<f64>::zeros((4, 2));
    let echo = |features: ArrayView2<'_, f64>| features.column(0).to_vec();
    assert_eq!(
        permutation_importance(echo, x.view(), &LABELS, 0, 0),
        Err(MetricError::ZeroRepeats)
    );
    assert_eq!(
        permutation_importance(echo, x.view(), &[0, 1], 1, 0),
        Err(MetricError::FeatureRowMismatch { rows: 4, labels: 2 })
    );
    let short = |_: ArrayView2<'_, f64>| vec![0.5];
    assert_eq!(
        permutation_importance(short, x.view(), &LABELS, 1, 0).map_err(|e| e.to_string()),
        Err("the model returned 1 scores for 4 rows".into())
    );
}

// --- errors ----------------------------------------------------------------------------------

#[test]
fn errors_say_which_row_and_rule() {
    let message = |result: Result<f64, MetricError>| result.map_err(|e| e.to_string());
    assert_eq!(
        message(roc_auc(&[0, 1], &[0.5])),
        Err("2 labels but 1 scores; every row needs one of each".into())
    );
    assert_eq!(
        message(roc_auc(&[], &[])),
        Err("there are no rows to evaluate".into())
    );
    assert_eq!(
        message(roc_auc(&[0, 2], &[0.1, 0.2])),
        Err("label 2 in row 1 is not binary; labels must be 0 (negative) or 1 (positive)".into())
    );
    assert_eq!(
        message(roc_auc(&[1, 1], &[0.1, 0.2])),
        Err("every label is 1: ROC AUC is undefined unless both classes 0 and 1 occur".into())
    );
    assert_eq!(
        message(roc_auc(&[0, 1], &[0.1, f64::NAN])),
        Err("score NaN in row 1 is not a finite number".into())
    );
    assert_eq!(
        message(log_loss(&[0, 1], &[0.1, 1.2])),
        Err("score 1.2 in row 1 is outside [0, 1]; log loss needs probabilities".into())
    );
    assert_eq!(
        calibration(&[0], &[0.5], 0).map_err(|e| e.to_string()),
        Err("calibration needs at least 1 bin, got 0".into())
    );
    assert_eq!(
        roc_curve(&[0, 0], &[0.1, 0.2]),
        Err(MetricError::SingleClass {
            label: 0,
            metric: "the ROC curve"
        })
    );
}

// --- properties ------------------------------------------------------------------------------

/// Labels with both classes and scores on a coarse grid, so that ties are common.
fn labelled_scores() -> impl Strategy<Value = (Vec<usize>, Vec<f64>)> {
    proptest::collection::vec((0usize..2, 0u32..8), 2..60)
        .prop_filter("both classes", |rows| {
            rows.iter().any(|r| r.0 == 0) && rows.iter().any(|r| r.0 == 1)
        })
        .prop_map(|rows| {
            rows.into_iter()
                .map(|(label, grid)| (label, f64::from(grid) / 7.0))
                .unzip()
        })
}

proptest! {
    #[test]
    fn roc_auc_is_the_pair_count_and_the_trapezoid_under_the_roc_curve(
        (labels, scores) in labelled_scores()
    ) {
        let auc = roc_auc(&labels, &scores).map_err(|e| TestCaseError::fail(e.to_string()))?;
        // Mann–Whitney by brute force: every (positive, negative) pair, ties ½.
        let (mut wins, mut pairs) = (0.0, 0.0);
        for (i, &li) in labels.iter().enumerate() {
            for (j, &lj) in labels.iter().enumerate() {
                if li == 1 && lj == 0 {
                    pairs += 1.0;
                    wins += match scores[i].partial_cmp(&scores[j]) {
                        Some(Ordering::Greater) => 1.0,
                        Some(Ordering::Equal) => 0.5,
                        _ => 0.0,
                    };
                }
            }
        }
        prop_assert!((auc - wins / pairs).abs() < 1e-12);
        let curve = roc_curve(&labels, &scores).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let trapezoid: f64 = (1..curve.fpr.len())
            .map(|k| (curve.fpr[k] - curve.fpr[k - 1]) * (curve.tpr[k] + curve.tpr[k - 1]) / 2.0)
            .sum();
        prop_assert!((auc - trapezoid).abs() < 1e-12);
    }

    #[test]
    fn average_precision_is_scikit_learns_sum_over_the_pr_curve(
        (labels, scores) in labelled_scores()
    ) {
        let ap = pr_auc(&labels, &scores).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let curve = pr_curve(&labels, &scores).map_err(|e| TestCaseError::fail(e.to_string()))?;
        // scikit-learn: -np.sum(np.diff(recall) * precision[:-1]).
        let reference: f64 = -(1..curve.recall.len())
            .map(|k| (curve.recall[k] - curve.recall[k - 1]) * curve.precision[k - 1])
            .sum::<f64>();
        prop_assert!((ap - reference).abs() < 1e-12);
        prop_assert!(ap > 0.0 && ap <= 1.0 + 1e-12);
    }

    #[test]
    fn lift_and_calibration_tables_account_for_every_row(
        (labels, scores) in labelled_scores()
    ) {
        let table = lift_by_decile(&labels, &scores)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(table.iter().map(|r| r.customers).sum::<usize>(), labels.len());
        prop_assert_eq!(table[DECILES - 1].cumulative_gain, 1.0);
        let sizes: Vec<usize> = table.iter().map(|r| r.customers).collect();
        prop_assert!(sizes.windows(2).all(|w| w[0] >= w[1] && w[0] - w[1] <= 1));
        let bins = calibration(&labels, &scores, DEFAULT_CALIBRATION_BINS)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(bins.iter().map(|b| b.customers).sum::<usize>(), labels.len());
    }

    #[test]
    fn the_chosen_thresholds_meet_their_definitions(
        (labels, scores) in labelled_scores(),
        target in 0.05f64..=1.0,
    ) {
        let fail = |e: MetricError| TestCaseError::fail(e.to_string());
        let f1_at = |t: f64| ConfusionMatrix::at_threshold(&labels, &scores, t).map(|m| m.f1());
        let best = choose_threshold(ThresholdPolicy::MaxF1, &labels, &scores).map_err(fail)?;
        let best_f1 = f1_at(best).map_err(fail)?;
        for &candidate in &scores {
            let f1 = f1_at(candidate).map_err(fail)?;
            prop_assert!(f1 < best_f1 || (f1 == best_f1 && candidate <= best));
        }
        let recall_at = |t: f64| ConfusionMatrix::at_threshold(&labels, &scores, t).map(|m| m.recall());
        let chosen = choose_threshold(ThresholdPolicy::TargetRecall(target), &labels, &scores)
            .map_err(fail)?;
        prop_assert!(recall_at(chosen).map_err(fail)? >= target);
        for &higher in scores.iter().filter(|&&s| s > chosen) {
            prop_assert!(recall_at(higher).map_err(fail)? < target);
        }
    }
}
