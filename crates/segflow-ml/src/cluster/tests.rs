use super::*;
use linfa::traits::Predict;
use ndarray::{Array1, array};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// `per_blob` rows around each centre with uniform noise in ±`spread` on every feature, the
/// blobs interleaved row by row; returns the data and each row's blob.
fn blobs(centres: &[&[f64]], per_blob: usize, spread: f64, seed: u64) -> (Array2<f64>, Vec<usize>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let d = centres[0].len();
    let n = centres.len() * per_blob;
    let mut x = Array2::zeros((n, d));
    let mut truth = Vec::with_capacity(n);
    for i in 0..n {
        let blob = i % centres.len();
        for f in 0..d {
            x[[i, f]] = centres[blob][f] + spread * (2.0 * rng.random::<f64>() - 1.0);
        }
        truth.push(blob);
    }
    (x, truth)
}

const FOUR_CORNERS: [&[f64]; 4] = [&[0.0, 0.0], &[8.0, 0.0], &[0.0, 8.0], &[8.0, 8.0]];

/// Each true group is one cluster and each cluster one true group.
fn is_same_partition(a: &[usize], b: &[usize]) -> bool {
    let mut a_to_b = std::collections::HashMap::new();
    let mut b_to_a = std::collections::HashMap::new();
    a.len() == b.len()
        && a.iter().zip(b).all(|(&x, &y)| {
            *a_to_b.entry(x).or_insert(y) == y && *b_to_a.entry(y).or_insert(x) == x
        })
}

fn params(algorithm: Algorithm) -> ClusterParams {
    ClusterParams {
        seed: 7,
        batch_size: 64,
        ..ClusterParams::new(algorithm)
    }
}

fn checked(algorithm: Algorithm) -> CheckedClusterParams {
    match params(algorithm).check() {
        Ok(checked) => checked,
        Err(err) => panic!("default parameters of {algorithm} were rejected: {err}"),
    }
}

fn bits(values: ArrayView2<'_, f64>) -> Vec<u64> {
    values.iter().map(|v| v.to_bits()).collect()
}

fn labels_of(assignments: &[Assignment]) -> Vec<usize> {
    assignments.iter().map(|a| a.segment).collect()
}

#[test]
fn algorithms_are_named_as_in_the_configuration() -> TestResult {
    let names = ["kmeans", "minibatch_kmeans", "gmm", "hierarchical"];
    for (algorithm, name) in Algorithm::ALL.into_iter().zip(names) {
        assert_eq!(algorithm.name(), name);
        assert_eq!(algorithm.to_string(), name);
        assert_eq!(serde_json::to_string(&algorithm)?, format!("\"{name}\""));
        assert_eq!(
            serde_json::from_str::<Algorithm>(&format!("\"{name}\""))?,
            algorithm
        );
        assert_eq!(name.parse::<Algorithm>()?, algorithm);
    }
    let err = "k_means".parse::<Algorithm>().err().map(|e| e.to_string());
    assert_eq!(
        err.as_deref(),
        Some(
            "unknown clustering algorithm 'k_means'; valid algorithms are kmeans, \
             minibatch_kmeans, gmm and hierarchical"
        )
    );
    Ok(())
}

#[test]
fn each_parameter_rule_has_its_own_error() {
    let kmeans = params(Algorithm::KMeans);
    assert_eq!(
        ClusterParams {
            n_init: 0,
            ..kmeans
        }
        .check(),
        Err(ClusterError::ZeroRestarts {
            algorithm: Algorithm::KMeans
        })
    );
    assert_eq!(
        ClusterParams {
            max_iter: 0,
            ..kmeans
        }
        .check(),
        Err(ClusterError::ZeroMaxIter {
            algorithm: Algorithm::KMeans
        })
    );
    for tol in [-1.0, f64::NAN, f64::INFINITY] {
        assert!(matches!(
            ClusterParams { tol, ..kmeans }.check(),
            Err(ClusterError::InvalidTolerance {
                algorithm: Algorithm::KMeans,
                ..
            })
        ));
    }
    // tol = 0 is valid for k-means (until no label changes) but not for EM.
    assert!(ClusterParams { tol: 0.0, ..kmeans }.check().is_ok());
    let gmm = params(Algorithm::Gmm);
    assert_eq!(
        ClusterParams { tol: 0.0, ..gmm }.check(),
        Err(ClusterError::InvalidGmmTolerance { tol: 0.0 })
    );
    assert_eq!(
        ClusterParams {
            batch_size: 0,
            ..params(Algorithm::MiniBatchKMeans)
        }
        .check(),
        Err(ClusterError::ZeroBatchSize)
    );
    assert_eq!(
        ClusterParams {
            silhouette_sample_size: 1,
            ..kmeans
        }
        .check(),
        Err(ClusterError::KMeans(
            KMeansError::SilhouetteSampleTooSmall { sample_size: 1 }
        ))
    );
    for algorithm in Algorithm::ALL {
        assert!(ClusterParams::new(algorithm).check().is_ok(), "{algorithm}");
    }
    // Messages say what the value means for the algorithm at hand.
    let message = |p: ClusterParams| p.check().err().map(|e| e.to_string()).unwrap_or_default();
    assert_eq!(
        message(ClusterParams { n_init: 0, ..gmm }),
        "n_init must be at least 1, got 0 (for gmm it is the number of EM restarts)"
    );
    assert_eq!(
        message(ClusterParams { tol: 0.0, ..gmm }),
        "tol must be a finite number > 0 for gmm, got 0 (EM stops when the mean log-likelihood \
         per row changes by less; 1e-3 is usual)"
    );
}

#[test]
fn every_algorithm_checks_the_data_with_the_kmeans_rules() {
    let x = array![[0.0, 1.0], [2.0, f64::NAN], [4.0, 5.0]];
    for algorithm in Algorithm::ALL {
        let p = checked(algorithm);
        assert!(
            matches!(
                fit(&p, x.view(), 2),
                Err(ClusterError::KMeans(KMeansError::NonFiniteValue {
                    row: 1,
                    column: 1,
                    ..
                }))
            ),
            "{algorithm}"
        );
        let finite = array![[0.0], [1.0]];
        assert_eq!(
            fit(&p, finite.view(), 3),
            Err(KMeansError::MoreClustersThanRows { k: 3, rows: 2 }.into())
        );
        assert_eq!(
            fit(&p, finite.view(), 0),
            Err(KMeansError::ZeroClusters.into())
        );
        assert_eq!(
            fit(&p, Array2::zeros((0, 2)).view(), 1),
            Err(KMeansError::EmptyInput.into())
        );
        assert_eq!(
            search_k(&p, finite.view(), 3, 2),
            Err(KMeansError::EmptyKRange { k_min: 3, k_max: 2 }.into())
        );
        assert_eq!(
            search_k(&p, finite.view(), 0, 2),
            Err(KMeansError::ZeroMinClusters.into())
        );
    }
}

#[test]
fn hierarchical_refuses_more_rows_than_it_can_hold_and_says_why() {
    let x = Array2::zeros((HIERARCHICAL_MAX_ROWS + 1, 1));
    let p = checked(Algorithm::Hierarchical);
    let err = fit(&p, x.view(), 2);
    assert_eq!(
        err,
        Err(ClusterError::TooManyRowsForHierarchical {
            rows: 10_001,
            max: 10_000
        })
    );
    assert_eq!(
        err.err().map(|e| e.to_string()).unwrap_or_default(),
        "hierarchical clustering accepts at most 10000 rows, got 10001: it keeps every pairwise \
         distance in memory (O(rows²), about 400 MB here); use kmeans or minibatch_kmeans for \
         inputs this large"
    );
    assert!(matches!(
        search_k(&p, x.view(), 1, 3),
        Err(ClusterError::TooManyRowsForHierarchical { .. })
    ));
}

#[test]
fn every_algorithm_recovers_well_separated_planted_blobs() -> TestResult {
    let three: [&[f64]; 3] = [&[0.0, 0.0, 0.0], &[6.0, 0.0, 1.0], &[0.0, 7.0, -2.0]];
    for (centres, per_blob) in [(&FOUR_CORNERS[..], 60), (&three[..], 50)] {
        let (x, truth) = blobs(centres, per_blob, 1.5, 3);
        for algorithm in Algorithm::ALL {
            let fit = fit(&checked(algorithm), x.view(), centres.len())?;
            assert_eq!((fit.algorithm, fit.k), (algorithm, centres.len()));
            assert!(is_same_partition(&truth, &fit.labels), "{algorithm}");
            // Each centroid is near its blob's centre, and the inertia is the sum of squares.
            for (label, centroid) in fit.centroids.outer_iter().enumerate() {
                let blob = truth[fit.labels.iter().position(|&l| l == label).unwrap_or(0)];
                let offset = squared_distance(centroid.as_slice().unwrap_or(&[]), centres[blob]);
                assert!(
                    offset < 0.25,
                    "{algorithm}: centroid {label} is off by {offset}"
                );
            }
            let by_hand: f64 = x
                .outer_iter()
                .zip(&fit.labels)
                .map(|(row, &l)| (&row - &fit.centroids.row(l)).mapv(|v| v * v).sum())
                .sum();
            assert!(
                (fit.inertia - by_hand).abs() <= 1e-9 * by_hand,
                "{algorithm}"
            );
            assert_eq!(fit.model.centroids(), fit.centroids.view(), "{algorithm}");
        }
    }
    Ok(())
}

#[test]
fn the_same_seed_gives_bit_identical_fits_on_one_and_two_threads() -> TestResult {
    // Several blocks of rows for the blocked sums (hierarchical: fewer, it is O(n²)).
    let (large, _) = blobs(&[&[0.0, 0.0], &[3.0, 1.0], &[1.0, 4.0]], 3_000, 2.0, 1);
    assert!(large.nrows() > 2 * ROWS_PER_BLOCK);
    let small = large.slice(ndarray::s![..1_500, ..]);
    for algorithm in Algorithm::ALL {
        let x = if algorithm == Algorithm::Hierarchical {
            small
        } else {
            large.view()
        };
        let p = ClusterParams {
            n_init: 2,
            ..params(algorithm)
        }
        .check()?;
        let run = |threads: usize| -> Result<ClusterFit, Box<dyn std::error::Error>> {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()?;
            Ok(pool.install(|| fit(&p, x, 3))?)
        };
        let (one, two) = (run(1)?, run(2)?);
        assert_eq!(one.labels, two.labels, "{algorithm}");
        assert_eq!(
            bits(one.centroids.view()),
            bits(two.centroids.view()),
            "{algorithm}"
        );
        assert_eq!(one.inertia.to_bits(), two.inertia.to_bits(), "{algorithm}");
        assert_eq!(
            serde_json::to_string(&one.model)?,
            serde_json::to_string(&two.model)?
        );
        assert_eq!((one.n_iter, one.converged), (two.n_iter, two.converged));
    }
    Ok(())
}

#[test]
fn kmeans_is_the_kmeans_module_unchanged() -> TestResult {
    let (x, _) = blobs(&FOUR_CORNERS, 30, 3.0, 4);
    let p = params(Algorithm::KMeans);
    let ours = fit(&p.check()?, x.view(), 4)?;
    let theirs = KMeansParams {
        k: 4,
        n_init: p.n_init,
        max_iter: p.max_iter,
        tol: p.tol,
        seed: p.seed,
    }
    .check()?
    .fit(x.view())?;
    assert_eq!(ours.centroids, theirs.centroids);
    assert_eq!(ours.labels, theirs.labels);
    assert_eq!(ours.inertia, theirs.inertia);
    assert_eq!(
        (ours.n_iter, ours.converged),
        (Some(theirs.n_iter), Some(theirs.converged))
    );
    Ok(())
}

#[test]
fn the_k_search_for_kmeans_is_the_kmeans_modules() -> TestResult {
    let (x, _) = blobs(&FOUR_CORNERS, 30, 2.5, 5);
    let p = ClusterParams {
        n_init: 2,
        silhouette_sample_size: 70,
        ..params(Algorithm::KMeans)
    };
    let ours = search_k(&p.check()?, x.view(), 1, 7)?;
    let theirs = kmeans::KSearchParams {
        k_min: 1,
        k_max: 7,
        n_init: p.n_init,
        max_iter: p.max_iter,
        tol: p.tol,
        seed: p.seed,
        silhouette_sample_size: p.silhouette_sample_size,
    }
    .check()?
    .run(x.view())?;
    assert_eq!(ours.curve, theirs.curve);
    assert_eq!(
        (ours.knee_k, ours.chosen_k, ours.reason),
        (theirs.knee_k, theirs.chosen_k, theirs.reason)
    );
    assert_eq!(ours.fit.centroids, theirs.fit.centroids);
    assert_eq!(ours.fit.labels, theirs.fit.labels);
    Ok(())
}

#[test]
fn the_k_search_finds_four_planted_blobs_with_every_algorithm() -> TestResult {
    let (x, truth) = blobs(&FOUR_CORNERS, 40, 1.5, 11);
    for algorithm in Algorithm::ALL {
        let search = search_k(&checked(algorithm), x.view(), 1, 7)?;
        assert_eq!(search.curve.len(), 7, "{algorithm}");
        assert_eq!(
            search.curve.iter().map(|p| p.k).collect::<Vec<_>>(),
            (1..=7).collect::<Vec<_>>()
        );
        assert_eq!(search.curve[0].silhouette, None);
        assert_eq!(
            (search.chosen_k, search.fit.k),
            (4, 4),
            "{algorithm}: {search:?}"
        );
        assert!(is_same_partition(&truth, &search.fit.labels), "{algorithm}");
    }
    Ok(())
}

#[test]
fn the_hierarchical_search_cuts_one_tree_as_separate_fits_would() -> TestResult {
    let (x, _) = blobs(&FOUR_CORNERS, 20, 3.5, 6);
    let p = checked(Algorithm::Hierarchical);
    let search = search_k(&p, x.view(), 2, 6)?;
    for point in &search.curve {
        assert_eq!(point.inertia, fit(&p, x.view(), point.k)?.inertia);
    }
    assert_eq!(search.fit, fit(&p, x.view(), search.chosen_k)?);
    // Cutting the tree further only splits clusters: inertia never rises with k.
    assert!(
        search
            .curve
            .windows(2)
            .all(|w| w[1].inertia <= w[0].inertia)
    );
    Ok(())
}

#[test]
fn hierarchical_merges_by_ward_cost_and_numbers_clusters_by_first_row() -> TestResult {
    // Ward merges the pairs 10, 11 and 0, 1 first (each raises the sum of squares by ½),
    // then 3 joins {0, 1} (+⅔·2.5²) rather than {10, 11} (+⅔·7.5²) or the pairs each other
    // (+1·10²).
    let x = array![[10.0], [11.0], [3.0], [0.0], [1.0]];
    let p = checked(Algorithm::Hierarchical);
    assert_eq!(fit(&p, x.view(), 3)?.labels, vec![0, 0, 1, 2, 2]);
    let two = fit(&p, x.view(), 2)?;
    assert_eq!(two.labels, vec![0, 0, 1, 1, 1]);
    assert_eq!(two.centroids, array![[10.5], [4.0 / 3.0]]);
    assert_eq!(fit(&p, x.view(), 5)?.labels, vec![0, 1, 2, 3, 4]);
    assert_eq!(fit(&p, x.view(), 1)?.labels, vec![0; 5]);
    Ok(())
}

#[test]
fn minibatch_stops_like_scikit_learn() {
    // No improvement of the smoothed batch inertia for 10 steps; the first step is ignored.
    let mut stop = MiniBatchStop::new(10, 100, 0.0);
    let mut inertias = vec![100.0, 5.0, 4.0, 3.0];
    inertias.extend([10.0; 10]);
    let stopped_at =
        (1..=inertias.len()).find(|&step| stop.after_step(step, 1.0, inertias[step - 1]));
    assert_eq!(stopped_at, Some(14));
    // A centre shift at or below the tolerance stops it, from the second step on.
    let mut stop = MiniBatchStop::new(10, 100, 0.5);
    assert!(!stop.after_step(1, 0.0, 1.0));
    assert!(!stop.after_step(2, 0.6, 1.0));
    assert!(stop.after_step(3, 0.5, 1.0));
}

#[test]
fn minibatch_runs_at_most_max_iter_passes_of_batches() -> TestResult {
    let (x, _) = blobs(&FOUR_CORNERS, 100, 3.0, 8);
    let p = ClusterParams {
        max_iter: 2,
        batch_size: 50,
        ..params(Algorithm::MiniBatchKMeans)
    };
    let fit = fit(&p.check()?, x.view(), 4)?;
    // 400 rows in batches of 50: 8 steps per pass.
    assert!(
        fit.n_iter.is_some_and(|steps| steps <= 16),
        "{:?}",
        fit.n_iter
    );
    assert_eq!(labels_of(&fit.model.assign(x.view())?), fit.labels);
    Ok(())
}

#[test]
fn gmm_labels_are_linfas_predictions() -> TestResult {
    // Overlapping blobs, so that the posterior decides rows near the boundaries.
    let (x, _) = blobs(&[&[0.0, 0.0], &[3.0, 0.5], &[1.0, 3.0]], 150, 2.0, 9);
    let p = ClusterParams {
        n_init: 1,
        ..params(Algorithm::Gmm)
    };
    let ours = fit(&p.check()?, x.view(), 3)?;
    let linfa = gmm_restart(&p, x.view(), 3, 0)?;
    let predicted: Array1<usize> = linfa.predict(&x);
    assert_eq!(ours.labels, predicted.to_vec());
    assert_eq!(&ours.centroids, linfa.means());
    // The posteriors themselves agree with linfa's.
    let posteriors = ours
        .model
        .posteriors(x.view())?
        .ok_or("a gmm has posteriors")?;
    let theirs = linfa.predict_proba(&x);
    let worst = (&posteriors - &theirs)
        .iter()
        .fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(worst < 1e-9, "posteriors differ by {worst}");
    assert!(
        posteriors
            .rows()
            .into_iter()
            .all(|r| (r.sum() - 1.0).abs() < 1e-12)
    );
    // Some rows are genuinely contested, so the test checks more than the obvious.
    assert!(
        posteriors
            .rows()
            .into_iter()
            .any(|r| r.iter().all(|&v| v < 0.9))
    );
    Ok(())
}

#[test]
fn gmm_keeps_the_restart_with_the_highest_likelihood() -> TestResult {
    let (x, _) = blobs(&FOUR_CORNERS, 25, 4.0, 10);
    let p = ClusterParams {
        n_init: 4,
        ..params(Algorithm::Gmm)
    };
    let fit = fit(&p.check()?, x.view(), 5)?;
    let rows = row_major(x.view());
    let likelihood = |model: &GaussianMixtureModel<f64>| -> Result<f64, ClusterError> {
        let weights = model.weights().to_vec();
        Ok(
            GaussianScorer::new(&weights, model.means().view(), model.covariances().view())?
                .mean_log_likelihood(&rows),
        )
    };
    let restarts = (0..4)
        .map(|r| gmm_restart(&p, x.view(), 5, r))
        .collect::<Result<Vec<_>, _>>()?;
    let scores = restarts
        .iter()
        .map(likelihood)
        .collect::<Result<Vec<_>, _>>()?;
    let best = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let first_best = scores.iter().position(|&s| s == best).ok_or("no restart")?;
    assert!(
        scores.iter().any(|&s| s != best),
        "the restarts should differ"
    );
    assert_eq!(&fit.centroids, restarts[first_best].means());
    Ok(())
}

#[test]
fn gaussian_posteriors_follow_the_densities_by_hand() -> TestResult {
    // One feature, components N(0, 1) and N(4, 4) weighted 0.25 / 0.75.
    let model = ClusterModel::Gaussian {
        weights: vec![0.25, 0.75],
        means: array![[0.0], [4.0]],
        covariances: Array3::from_shape_vec((2, 1, 1), vec![1.0, 4.0])?,
    };
    let density = |x: f64, mean: f64, var: f64| {
        (-(x - mean) * (x - mean) / (2.0 * var)).exp() / (2.0 * std::f64::consts::PI * var).sqrt()
    };
    let x = array![[-1.0], [1.5], [3.0], [9.0]];
    let posteriors = model.posteriors(x.view())?.ok_or("a gmm has posteriors")?;
    for (row, p) in x.column(0).iter().zip(posteriors.rows()) {
        let a = 0.25 * density(*row, 0.0, 1.0);
        let b = 0.75 * density(*row, 4.0, 4.0);
        assert!((p[0] - a / (a + b)).abs() < 1e-12, "{row}: {p}");
    }
    let assigned = model.assign(x.view())?;
    // 1.5 is nearer the first mean, but the wider, heavier component is more probable there.
    let expected = [
        (0, 1.0, Some(1)),
        (1, 2.5, Some(0)),
        (1, 1.0, Some(0)),
        (1, 5.0, Some(0)),
    ];
    for (a, (segment, distance, second)) in assigned.iter().zip(expected) {
        assert_eq!((a.segment, a.second_segment), (segment, second));
        assert!((a.distance - distance).abs() < 1e-12);
    }
    // The far tail is still decided (no underflow to 0/0): the wider component.
    assert_eq!(model.assign(array![[-60.0]].view())?[0].segment, 1);
    Ok(())
}

#[test]
fn centroid_models_assign_exactly_as_kmeans() -> TestResult {
    let (x, _) = blobs(&FOUR_CORNERS, 30, 3.0, 12);
    let kmeans_fit = KMeansParams::new(4).check()?.fit(x.view())?;
    let model = ClusterModel::Centroids {
        centroids: kmeans_fit.centroids.clone(),
    };
    // Include exact ties: rows on centroids' midpoints.
    let c = &kmeans_fit.centroids;
    let midpoint = (&c.row(0) + &c.row(1)) / 2.0;
    let mut rows = x.clone();
    rows.row_mut(0).assign(&midpoint);
    assert_eq!(model.assign(rows.view())?, kmeans_fit.assign(rows.view())?);
    Ok(())
}

#[test]
fn training_assignments_keep_the_fitted_labels() -> TestResult {
    // Row 1 is labelled 0 though nearer centroid 1 (as a Ward cut or a capped kmeans may do).
    let fit = ClusterFit {
        algorithm: Algorithm::Hierarchical,
        k: 3,
        centroids: array![[0.0], [4.0], [10.0]],
        labels: vec![0, 0, 2],
        inertia: 0.0,
        n_iter: None,
        converged: None,
        model: ClusterModel::Centroids {
            centroids: array![[0.0], [4.0], [10.0]],
        },
    };
    let x = array![[1.0], [3.0], [9.0]];
    let got = fit.training_assignments(x.view())?;
    let expected = [(0, 1.0, Some(1)), (0, 3.0, Some(1)), (2, 1.0, Some(1))];
    for (a, (segment, distance, second)) in got.iter().zip(expected) {
        assert_eq!((a.segment, a.second_segment), (segment, second));
        assert!((a.distance - distance).abs() < 1e-12);
    }
    assert_eq!(fit.model.assign(x.view())?[1].segment, 1);
    assert_eq!(
        fit.training_assignments(array![[1.0]].view()),
        Err(KMeansError::LabelCountMismatch { rows: 1, labels: 3 }.into())
    );
    // Where the labels are the model's own choice, it is the model's assignment.
    let (x, _) = blobs(&FOUR_CORNERS, 20, 3.0, 13);
    for algorithm in [
        Algorithm::KMeans,
        Algorithm::Gmm,
        Algorithm::MiniBatchKMeans,
    ] {
        let fit = super::fit(&checked(algorithm), x.view(), 4)?;
        assert_eq!(
            fit.training_assignments(x.view())?,
            fit.model.assign(x.view())?,
            "{algorithm}"
        );
    }
    Ok(())
}

#[test]
fn models_roundtrip_exactly_through_json() -> TestResult {
    let (x, _) = blobs(&FOUR_CORNERS, 25, 3.0, 14);
    for algorithm in [Algorithm::KMeans, Algorithm::Gmm] {
        let model = fit(&checked(algorithm), x.view(), 4)?.model;
        let json = serde_json::to_string(&model)?;
        let back: ClusterModel = serde_json::from_str(&json)?;
        assert_eq!(back, model, "{algorithm}");
        assert_eq!(bits(back.centroids()), bits(model.centroids()));
        assert_eq!(back.assign(x.view())?, model.assign(x.view())?);
    }
    let json = serde_json::to_value(ClusterModel::Centroids {
        centroids: array![[0.5, 1.0]],
    })?;
    assert_eq!(
        json,
        serde_json::json!({"kind": "centroids", "centroids": {"v": 1, "dim": [1, 2], "data": [0.5, 1.0]}})
    );
    let unknown =
        r#"{"kind": "centroids", "centroids": {"v": 1, "dim": [1, 1], "data": [0.5]}, "extra": 1}"#;
    assert!(serde_json::from_str::<ClusterModel>(unknown).is_err());
    Ok(())
}

#[test]
fn any_f64_roundtrips_exactly_through_json() -> TestResult {
    let mut rng = ChaCha8Rng::seed_from_u64(15);
    let values: Vec<f64> = (0..20_000)
        .map(|_| f64::from_bits(rng.random::<u64>()))
        .filter(|v| v.is_finite())
        .chain([f64::MIN_POSITIVE, 5e-324, f64::MAX, -0.0, 0.1 + 0.2])
        .collect();
    let model = ClusterModel::Centroids {
        centroids: Array2::from_shape_vec((values.len(), 1), values)?,
    };
    let back: ClusterModel = serde_json::from_str(&serde_json::to_string(&model)?)?;
    assert_eq!(bits(back.centroids()), bits(model.centroids()));
    Ok(())
}

#[test]
fn an_invalid_model_is_an_error_not_a_panic() {
    let gaussian = |weights: Vec<f64>, covariances: Vec<f64>| ClusterModel::Gaussian {
        weights,
        means: array![[0.0], [1.0]],
        covariances: Array3::from_shape_vec((2, 1, 1), covariances)
            .unwrap_or_else(|_| Array3::zeros((0, 0, 0))),
    };
    let x = array![[0.5]];
    let invalid = |model: &ClusterModel| {
        matches!(
            model.assign(x.view()),
            Err(ClusterError::InvalidModel { .. })
        ) && matches!(model.validate(), Err(ClusterError::InvalidModel { .. }))
    };
    assert!(gaussian(vec![0.5, 0.5], vec![1.0, 1.0]).validate().is_ok());
    assert!(invalid(&gaussian(vec![0.5], vec![1.0, 1.0])));
    assert!(invalid(&gaussian(vec![1.0, 0.0], vec![1.0, 1.0])));
    assert!(invalid(&gaussian(vec![0.5, 0.5], vec![1.0, -1.0])));
    assert!(invalid(&gaussian(vec![0.5, 0.5], vec![1.0, f64::NAN])));
    assert!(invalid(&ClusterModel::Centroids {
        centroids: Array2::zeros((0, 1))
    }));
    assert!(invalid(&ClusterModel::Centroids {
        centroids: array![[f64::INFINITY]]
    }));
    let message = gaussian(vec![0.5, 0.5], vec![1.0, -1.0])
        .validate()
        .err()
        .map(|e| e.to_string());
    assert_eq!(
        message.as_deref(),
        Some(
            "the clustering model is invalid: the covariance of component 1 is not a finite \
             positive-definite matrix; fit it again"
        )
    );
    // Rows of the wrong width are the caller's mistake, reported as k-means reports it.
    let model = gaussian(vec![0.5, 0.5], vec![1.0, 1.0]);
    assert_eq!(
        model.assign(array![[0.5, 1.0]].view()),
        Err(KMeansError::AssignWidthMismatch {
            expected: 1,
            got: 2
        }
        .into())
    );
}

#[test]
fn identical_rows_are_fitted_or_refused_never_a_panic() -> TestResult {
    let x = Array2::from_elem((12, 2), 3.0);
    for algorithm in [Algorithm::KMeans, Algorithm::MiniBatchKMeans, Algorithm::Hierarchical] {
        let fit = fit(&checked(algorithm), x.view(), 2)?;
        assert_eq!(fit.inertia, 0.0, "{algorithm}");
    }
    // EM cannot place two components on one point: an error that names k and suggests a way out.
    let err = fit(&checked(Algorithm::Gmm), x.view(), 2);
    let Err(ClusterError::GmmFit { k: 2, reason }) = &err else {
        panic!("expected a gmm fit error, got {err:?}");
    };
    assert!(!reason.is_empty());
    let message = err.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("try a smaller k"), "{message}");
    Ok(())
}
