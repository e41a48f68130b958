//! Seeded, reproducible train/test splits: stratified hold-out, stratified k-fold, and a split
//! on time; and seeded row samples ([`sample_rows`]).
//!
//! A [`Split`] holds row indices (into the `labels` or `times` passed in), each side sorted
//! ascending, so a split is a plain, comparable value that can be written to a report.
//!
//! # Determinism
//! Classes are processed in ascending label order. The rows of class `c` are shuffled by
//! `ChaCha8Rng::seed_from_u64(seed)` set to stream `c`, so a class's shuffle depends only on the
//! seed, the class and that class's rows: the same labels and seed give the same split on every
//! platform and run, and adding rows of one class leaves the other classes' draws unchanged.
//!
//! # The per-class rule of [`stratified_split`]
//! A class with `n` rows puts `clamp(round(n × test_fraction), 1, n − 1)` rows in the test side
//! and the rest in the train side, where `round` rounds halves up (`f64::round`) and the
//! product is computed in `f64`. The clamp keeps every class on both sides, so a class needs at
//! least 2 rows.
//!
//! scikit-learn's `train_test_split(stratify=y, test_size=f)` fixes the total first
//! (`ceil(f × n_rows)` test rows) and shares it out by largest remainder, breaking ties between
//! classes at random. For two classes the per-class counts agree with the rule above except
//! when a product ends in exactly .5 (a tie scikit-learn breaks at random, we always round up)
//! or when the clamp applies (scikit-learn may leave a class out of one side). Our total is the
//! sum of the per-class counts, so it can differ from `ceil(f × n_rows)` by at most half the
//! number of classes.

use std::collections::BTreeMap;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// Row indices of the two sides of a split, each sorted ascending.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Split {
    pub train: Vec<usize>,
    pub test: Vec<usize>,
}

/// Everything that can make a split impossible, one variant per rule.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SplitError {
    #[error("there are no rows to split")]
    NoRows,
    #[error("test_fraction must be strictly between 0 and 1, got {0}")]
    TestFractionOutOfRange(f64),
    #[error(
        "class {class} has only {rows} row(s); a stratified split needs at least 2 rows per \
         class, one for each side (drop or merge the class)"
    )]
    ClassTooSmallToSplit { class: usize, rows: usize },
    #[error("k-fold needs at least 2 folds, got {0}")]
    TooFewFolds(usize),
    #[error(
        "class {class} has only {rows} row(s), fewer than the {folds} folds; every test fold \
         needs every class (use fewer folds)"
    )]
    ClassSmallerThanFolds {
        class: usize,
        rows: usize,
        folds: usize,
    },
}

/// Rows of each class, classes in ascending order, rows ascending within a class.
fn rows_by_class(labels: &[usize]) -> BTreeMap<usize, Vec<usize>> {
    let mut classes: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (row, &label) in labels.iter().enumerate() {
        classes.entry(label).or_default().push(row);
    }
    classes
}

/// The rows of `class` in the order this seed shuffles them (see the module docs).
fn shuffled(mut rows: Vec<usize>, class: usize, seed: u64) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(class as u64);
    rows.shuffle(&mut rng);
    rows
}

/// Rows of a class with `rows` members that go to the test side (see the module docs).
fn test_count(rows: usize, test_fraction: f64) -> usize {
    let rounded = (rows as f64 * test_fraction).round() as usize;
    rounded.clamp(1, rows - 1)
}

/// Stratified hold-out split: per class, `clamp(round(n_class × test_fraction), 1, n_class − 1)`
/// randomly chosen rows go to `test` (the exact rule and how it compares with scikit-learn are
/// in the module docs).
///
/// Errors: no rows, `test_fraction` not strictly inside (0, 1), or a class with fewer than 2
/// rows (the first such class in ascending order is named).
pub fn stratified_split(
    labels: &[usize],
    test_fraction: f64,
    seed: u64,
) -> Result<Split, SplitError> {
    if labels.is_empty() {
        return Err(SplitError::NoRows);
    }
    // Written so NaN fails too.
    if !(test_fraction > 0.0 && test_fraction < 1.0) {
        return Err(SplitError::TestFractionOutOfRange(test_fraction));
    }
    let classes = rows_by_class(labels);
    if let Some((&class, rows)) = classes.iter().find(|(_, rows)| rows.len() < 2) {
        return Err(SplitError::ClassTooSmallToSplit {
            class,
            rows: rows.len(),
        });
    }
    let mut split = Split {
        train: Vec::with_capacity(labels.len()),
        test: Vec::new(),
    };
    for (class, rows) in classes {
        let n_test = test_count(rows.len(), test_fraction);
        let rows = shuffled(rows, class, seed);
        split.test.extend_from_slice(&rows[..n_test]);
        split.train.extend_from_slice(&rows[n_test..]);
    }
    split.train.sort_unstable();
    split.test.sort_unstable();
    Ok(split)
}

/// Stratified k-fold: `k` splits whose test sides partition the rows, every row in exactly one
/// test fold; the train side of a split is every other row.
///
/// Allocation is scikit-learn's `StratifiedKFold` (since 0.22): with the rows ordered by class,
/// the `i`-th row in that order counts towards fold `i mod k`. So each class's rows are spread
/// over the folds with counts that differ by at most 1, and the fold sizes also differ by at
/// most 1. Which rows of a class fill those counts is decided by the seeded shuffle of the
/// class (module docs): the first shuffled rows go to fold 0, the next to fold 1, and so on
/// (scikit-learn's `shuffle=True` shuffles the fold labels instead; the distribution is the
/// same, the draws are not).
///
/// Errors: no rows, `k < 2`, or a class with fewer than `k` rows (stricter than scikit-learn,
/// which only warns: a test fold without a class cannot have a ROC AUC).
pub fn stratified_k_fold(labels: &[usize], k: usize, seed: u64) -> Result<Vec<Split>, SplitError> {
    if labels.is_empty() {
        return Err(SplitError::NoRows);
    }
    if k < 2 {
        return Err(SplitError::TooFewFolds(k));
    }
    let classes = rows_by_class(labels);
    if let Some((&class, rows)) = classes.iter().find(|(_, rows)| rows.len() < k) {
        return Err(SplitError::ClassSmallerThanFolds {
            class,
            rows: rows.len(),
            folds: k,
        });
    }
    let mut fold_of_row = vec![0usize; labels.len()];
    // Position of the class's first row in the class-sorted order of all rows.
    let mut position = 0usize;
    for (class, rows) in classes {
        let n_rows = rows.len();
        let rows = shuffled(rows, class, seed);
        // Positions position..position + n_rows go round-robin to the folds; the fold with
        // offset `f` from this class's first fold receives every k-th of them.
        let mut next = 0usize;
        for fold in 0..k {
            let offset = (fold + k - position % k) % k;
            let count = n_rows.saturating_sub(offset).div_ceil(k);
            for &row in &rows[next..next + count] {
                fold_of_row[row] = fold;
            }
            next += count;
        }
        position += n_rows;
    }
    Ok((0..k)
        .map(|fold| {
            let (test, train): (Vec<usize>, Vec<usize>) =
                (0..labels.len()).partition(|&row| fold_of_row[row] == fold);
            Split { train, test }
        })
        .collect())
}

/// Out-of-time split: rows with `times[row] < cutoff` train, the rest (`>= cutoff`) test.
/// No randomness; either side may be empty.
pub fn time_split(times: &[i64], cutoff: i64) -> Split {
    let (train, test) = (0..times.len()).partition(|&row| times[row] < cutoff);
    Split { train, test }
}


/// The rows a bounded computation looks at: all `rows` up to `max_rows`, else `max_rows` of
/// them drawn without replacement by `ChaCha8Rng::seed_from_u64(seed)`, in row order.
pub fn sample_rows(rows: usize, max_rows: usize, seed: u64) -> Vec<usize> {
    if rows <= max_rows {
        return (0..rows).collect();
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut sample = rand::seq::index::sample(&mut rng, rows, max_rows).into_vec();
    sample.sort_unstable();
    sample
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

    /// `n0` zeros then `n1` ones, interleaved so that classes are not in row blocks.
    fn binary_labels(n0: usize, n1: usize) -> Vec<usize> {
        let mut labels = vec![0; n0];
        labels.extend(std::iter::repeat_n(1, n1));
        // A fixed, non-trivial permutation: row r takes element (r * 7) mod n when 7 ∤ n.
        let n = labels.len();
        if !n.is_multiple_of(7) {
            return (0..n).map(|r| labels[(r * 7) % n]).collect();
        }
        labels
    }

    fn count_class(labels: &[usize], rows: &[usize], class: usize) -> usize {
        rows.iter().filter(|&&r| labels[r] == class).count()
    }

    fn assert_partition(split: &Split, n: usize) {
        assert!(split.train.windows(2).all(|w| w[0] < w[1]), "train sorted");
        assert!(split.test.windows(2).all(|w| w[0] < w[1]), "test sorted");
        let mut all: Vec<usize> = split.train.iter().chain(&split.test).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..n).collect::<Vec<_>>(), "disjoint and complete");
    }

    #[test]
    fn test_side_holds_the_rounded_fraction_of_each_class() -> TestResult {
        // 900 negatives and 100 positives at 20 %: 180 and 20 test rows.
        let labels = binary_labels(900, 100);
        let split = stratified_split(&labels, 0.2, 1)?;
        assert_eq!(count_class(&labels, &split.test, 0), 180);
        assert_eq!(count_class(&labels, &split.test, 1), 20);
        assert_eq!(split.train.len(), 800);
        // 7 × 0.25 = 1.75 → 2; 10 × 0.25 = 2.5 → 3 (halves round up); 3 × 0.25 = 0.75 → 1.
        let labels = [vec![0; 7], vec![1; 10], vec![2; 3]].concat();
        let split = stratified_split(&labels, 0.25, 1)?;
        assert_eq!(count_class(&labels, &split.test, 0), 2);
        assert_eq!(count_class(&labels, &split.test, 1), 3);
        assert_eq!(count_class(&labels, &split.test, 2), 1);
        Ok(())
    }

    #[test]
    fn every_class_keeps_a_row_on_each_side() -> TestResult {
        // 2 × 0.1 rounds to 0 and 2 × 0.9 to 2; the clamp keeps one row on each side.
        let labels = [vec![0; 50], vec![1; 2]].concat();
        for fraction in [0.1, 0.9] {
            let split = stratified_split(&labels, fraction, 3)?;
            assert_eq!(count_class(&labels, &split.test, 1), 1, "at {fraction}");
            assert_eq!(count_class(&labels, &split.train, 1), 1, "at {fraction}");
        }
        Ok(())
    }

    #[test]
    fn split_sides_are_sorted_disjoint_and_complete() -> TestResult {
        let labels = binary_labels(37, 13);
        assert_partition(&stratified_split(&labels, 0.3, 9)?, labels.len());
        Ok(())
    }

    #[test]
    fn same_seed_gives_the_same_split() -> TestResult {
        let labels = binary_labels(300, 60);
        assert_eq!(
            stratified_split(&labels, 0.25, 42)?,
            stratified_split(&labels, 0.25, 42)?
        );
        assert_eq!(
            stratified_k_fold(&labels, 5, 42)?,
            stratified_k_fold(&labels, 5, 42)?
        );
        Ok(())
    }

    #[test]
    fn different_seeds_give_different_splits() -> TestResult {
        let labels = binary_labels(300, 60);
        let a = stratified_split(&labels, 0.25, 1)?;
        let b = stratified_split(&labels, 0.25, 2)?;
        assert_ne!(a.test, b.test);
        // Same per-class counts all the same: only which rows changes.
        assert_eq!(
            count_class(&labels, &a.test, 1),
            count_class(&labels, &b.test, 1)
        );
        assert_ne!(
            stratified_k_fold(&labels, 5, 1)?,
            stratified_k_fold(&labels, 5, 2)?
        );
        Ok(())
    }

    #[test]
    fn each_class_is_shuffled_by_its_own_stream() -> TestResult {
        // Classes alternate, so class 0 is the even rows and class 1 the odd ones. Were both
        // classes shuffled alike, the odd test rows would be the even ones plus one.
        let labels: Vec<usize> = (0..40).map(|row| row % 2).collect();
        let split = stratified_split(&labels, 0.5, 3)?;
        let (even, odd): (Vec<usize>, Vec<usize>) = split.test.iter().partition(|&&r| r % 2 == 0);
        let even_plus_one: Vec<usize> = even.iter().map(|r| r + 1).collect();
        assert_ne!(even_plus_one, odd);
        Ok(())
    }

    #[test]
    fn a_split_is_pinned_for_a_given_seed() -> TestResult {
        // Guards the documented stream layout: changing how rows are drawn changes this value,
        // which would silently change every pipeline's evaluation.
        let labels = [0, 0, 0, 0, 1, 1, 1, 1, 0, 1];
        let first = stratified_split(&labels, 0.4, 7)?;
        assert_eq!(
            first,
            Split {
                train: vec![1, 2, 5, 6, 8, 9],
                test: vec![0, 3, 4, 7]
            }
        );
        let folds = stratified_k_fold(&labels, 2, 7)?;
        // Class 0 (5 rows) gives fold 0 three rows, class 1 two: folds of 5 and 5.
        assert_eq!(
            folds[0],
            Split {
                train: vec![2, 5, 6, 8, 9],
                test: vec![0, 1, 3, 4, 7]
            }
        );
        assert_eq!(folds[1].test, folds[0].train);
        Ok(())
    }

    #[test]
    fn each_row_is_in_exactly_one_test_fold() -> TestResult {
        let labels = binary_labels(103, 29);
        let folds = stratified_k_fold(&labels, 5, 4)?;
        assert_eq!(folds.len(), 5);
        let mut times_tested = vec![0usize; labels.len()];
        for fold in &folds {
            assert_partition(fold, labels.len());
            fold.test.iter().for_each(|&r| times_tested[r] += 1);
        }
        assert!(times_tested.iter().all(|&t| t == 1), "{times_tested:?}");
        Ok(())
    }

    #[test]
    fn fold_class_counts_and_sizes_differ_by_at_most_one() -> TestResult {
        // 103 negatives over 5 folds: 21,21,21,20,20; 29 positives: 6,6,6,6,5, placed so the
        // fold sizes (27,27,26,26,26) also differ by at most one.
        let labels = binary_labels(103, 29);
        let folds = stratified_k_fold(&labels, 5, 4)?;
        let negatives: Vec<usize> = folds
            .iter()
            .map(|f| count_class(&labels, &f.test, 0))
            .collect();
        let positives: Vec<usize> = folds
            .iter()
            .map(|f| count_class(&labels, &f.test, 1))
            .collect();
        let sizes: Vec<usize> = folds.iter().map(|f| f.test.len()).collect();
        assert_eq!(negatives, [21, 21, 21, 20, 20]);
        assert_eq!(positives, [6, 6, 5, 6, 6]);
        assert_eq!(sizes, [27, 27, 26, 26, 26]);
        Ok(())
    }

    #[test]
    fn time_split_trains_strictly_before_the_cutoff() {
        let times = [5, 1, 10, 7, 10, -3];
        let split = time_split(&times, 7);
        assert_eq!(split.train, [0, 1, 5]);
        assert_eq!(split.test, [2, 3, 4]);
        assert_eq!(
            time_split(&[], 0),
            Split {
                train: vec![],
                test: vec![]
            }
        );
    }

    #[test]
    fn errors_name_the_rule_and_the_fix() {
        let message = |e: SplitError| e.to_string();
        assert_eq!(
            stratified_split(&[], 0.2, 0).map_err(message),
            Err("there are no rows to split".into())
        );
        assert_eq!(
            stratified_split(&[0, 1], 1.0, 0).map_err(message),
            Err("test_fraction must be strictly between 0 and 1, got 1".into())
        );
        assert!(matches!(
            stratified_split(&[0, 1], f64::NAN, 0),
            Err(SplitError::TestFractionOutOfRange(_))
        ));
        assert_eq!(
            stratified_split(&[0, 0, 1, 2, 2], 0.5, 0).map_err(message),
            Err(
                "class 1 has only 1 row(s); a stratified split needs at least 2 rows per class, \
                 one for each side (drop or merge the class)"
                    .into()
            )
        );
        assert_eq!(
            stratified_k_fold(&[0, 1], 1, 0).map_err(message),
            Err("k-fold needs at least 2 folds, got 1".into())
        );
        assert_eq!(
            stratified_k_fold(&[0, 0, 0, 1, 1, 1, 1], 4, 0).map_err(message),
            Err(
                "class 0 has only 3 row(s), fewer than the 4 folds; every test fold needs every \
                 class (use fewer folds)"
                    .into()
            )
        );
    }

    proptest! {
        #[test]
        fn any_stratified_split_is_a_partition_following_the_rule(
            labels in proptest::collection::vec(0usize..3, 2..200),
            fraction in 0.01f64..0.99,
            seed in any::<u64>(),
        ) {
            match stratified_split(&labels, fraction, seed) {
                Ok(split) => {
                    assert_partition(&split, labels.len());
                    for (class, rows) in rows_by_class(&labels) {
                        let expected = test_count(rows.len(), fraction);
                        prop_assert_eq!(count_class(&labels, &split.test, class), expected);
                    }
                }
                Err(SplitError::ClassTooSmallToSplit { rows, .. }) => prop_assert!(rows < 2),
                Err(other) => prop_assert!(false, "unexpected {other}"),
            }
        }

        #[test]
        fn any_k_fold_tests_each_row_once_with_balanced_classes(
            labels in proptest::collection::vec(0usize..3, 10..200),
            k in 2usize..6,
            seed in any::<u64>(),
        ) {
            let Ok(folds) = stratified_k_fold(&labels, k, seed) else {
                return Ok(());
            };
            let mut times_tested = vec![0usize; labels.len()];
            for fold in &folds {
                assert_partition(fold, labels.len());
                fold.test.iter().for_each(|&r| times_tested[r] += 1);
            }
            prop_assert!(times_tested.iter().all(|&t| t == 1));
            let sizes: Vec<usize> = folds.iter().map(|f| f.test.len()).collect();
            prop_assert!(sizes.iter().max().unwrap_or(&0) - sizes.iter().min().unwrap_or(&0) <= 1);
            for class in rows_by_class(&labels).into_keys() {
                let counts: Vec<usize> =
                    folds.iter().map(|f| count_class(&labels, &f.test, class)).collect();
                let spread = counts.iter().max().unwrap_or(&0) - counts.iter().min().unwrap_or(&0);
                prop_assert!(spread <= 1, "class {} counts {:?}", class, counts);
            }
        }
    }
}
