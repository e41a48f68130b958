"""scikit-learn side of benches/forest_vs_sklearn.sh.

  forest_sklearn.py generate DIR   writes the deterministic benchmark data set to DIR
  forest_sklearn.py fit DIR MODEL  fits MODEL (forest | tree) on DIR, prints key=value figures

Data: make_classification(n_samples=200_000, n_features=20, n_informative=10, random_state=0),
first 150k rows train, last 50k test; X as row-major little-endian f64, y as u8, plus
shape.txt "n_train n_test n_features" (the format benches/forest_fit.rs reads).
"""

import os
import sys
import time

import numpy as np

N_SAMPLES = 200_000
N_TRAIN = 150_000
N_FEATURES = 20


def generate(out_dir):
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=N_SAMPLES, n_features=N_FEATURES, n_informative=10, random_state=0
    )
    os.makedirs(out_dir, exist_ok=True)
    x = np.ascontiguousarray(x, dtype="<f8")
    y = y.astype(np.uint8)
    x[:N_TRAIN].tofile(os.path.join(out_dir, "train_x.f64"))
    x[N_TRAIN:].tofile(os.path.join(out_dir, "test_x.f64"))
    y[:N_TRAIN].tofile(os.path.join(out_dir, "train_y.u8"))
    y[N_TRAIN:].tofile(os.path.join(out_dir, "test_y.u8"))
    with open(os.path.join(out_dir, "shape.txt"), "w") as f:
        f.write(f"{N_TRAIN} {N_SAMPLES - N_TRAIN} {N_FEATURES}\n")


def load(data_dir):
    with open(os.path.join(data_dir, "shape.txt")) as f:
        n_train, n_test, n_features = map(int, f.read().split())
    def matrix(name, rows):
        return np.fromfile(os.path.join(data_dir, name), dtype="<f8").reshape(rows, n_features)
    def labels(name):
        return np.fromfile(os.path.join(data_dir, name), dtype=np.uint8)
    return (matrix("train_x.f64", n_train), labels("train_y.u8"),
            matrix("test_x.f64", n_test), labels("test_y.u8"))


def fit(data_dir, model, n_trees):
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.metrics import roc_auc_score
    from sklearn.tree import DecisionTreeClassifier

    x_train, y_train, x_test, y_test = load(data_dir)
    if model == "forest":
        estimator = RandomForestClassifier(
            n_estimators=n_trees, max_depth=None, max_features="sqrt", n_jobs=-1, random_state=0
        )
    elif model == "tree":
        estimator = DecisionTreeClassifier(random_state=0)
    else:
        raise SystemExit(f"unknown model {model} (forest|tree)")
    start = time.perf_counter()
    estimator.fit(x_train, y_train)
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    scores = estimator.predict_proba(x_test)[:, 1]
    predict_seconds = time.perf_counter() - start
    print(f"model={model}")
    print(f"fit_seconds={fit_seconds:.3f}")
    print(f"predict_seconds={predict_seconds:.3f}")
    print(f"test_auc={roc_auc_score(y_test, scores):.5f}")


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "generate":
        generate(sys.argv[2])
    elif len(sys.argv) >= 4 and sys.argv[1] == "fit":
        fit(sys.argv[2], sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else 100)
    else:
        raise SystemExit(__doc__)
