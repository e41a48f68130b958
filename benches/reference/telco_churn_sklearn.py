"""scikit-learn's RandomForestClassifier on the split segflow's Telco churn stage wrote out,
for the golden file the test `churn::telco_test_roc_auc_is_within_0_005_of_scikit_learn`
compares with.

  python telco_churn_sklearn.py TELCO_PARQUET CHURN_SCORES_DIR OUT_JSON

CHURN_SCORES_DIR is the `churn_scores` partition written by
`segflow run pipelines/telco_churn.yaml --run-date 2026-11-24`; its `split` column says which
customers segflow trained on and which it held out. The features of pipelines/telco_churn.yaml
are rebuilt here independently (numeric columns as they are, TotalCharges' 11 blanks as 0,
every level of each text column one-hot), and the forest gets the same settings: 200 trees,
sqrt features, min_samples_leaf 5, bootstrap. A forest's test AUC moves with its random seed,
so the golden value is the mean over seeds 0..9 (their spread is recorded too).
Run by benches/telco_churn_golden.sh, which makes the venv.
"""
import hashlib
import json
import sys

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import sklearn
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import roc_auc_score

NUMERIC = ["tenure", "MonthlyCharges", "TotalCharges", "SeniorCitizen"]
CATEGORICAL = [
    "gender", "Partner", "Dependents", "PhoneService", "MultipleLines", "InternetService",
    "OnlineSecurity", "OnlineBackup", "DeviceProtection", "TechSupport", "StreamingTV",
    "StreamingMovies", "Contract", "PaperlessBilling", "PaymentMethod",
]
SEEDS = range(10)


def main(telco_path, scores_dir, out_path):
    telco = pq.read_table(telco_path).to_pylist()
    splits = {r["customerID"]: r["split"] for r in ds.dataset(scores_dir, format="parquet").to_table(columns=["customerID", "split"]).to_pylist()}
    if len(splits) != len(telco):
        sys.exit(f"{scores_dir} scores {len(splits)} customers; the Telco table has {len(telco)}")
    columns = []
    for name in NUMERIC:
        columns.append([0.0 if r[name] is None else float(r[name]) for r in telco])
    for name in CATEGORICAL:
        for level in sorted({r[name] for r in telco}):
            columns.append([1.0 if r[name] == level else 0.0 for r in telco])
    x = np.array(columns).T
    y = np.array([1 if r["Churn"] == "Yes" else 0 for r in telco])
    test = np.array([splits[r["customerID"]] == "test" for r in telco])
    test_ids = sorted(r["customerID"] for r in telco if splits[r["customerID"]] == "test")
    aucs = []
    for seed in SEEDS:
        forest = RandomForestClassifier(n_estimators=200, max_features="sqrt", min_samples_leaf=5, bootstrap=True, n_jobs=-1, random_state=seed)
        forest.fit(x[~test], y[~test])
        aucs.append(float(roc_auc_score(y[test], forest.predict_proba(x[test])[:, 1])))
    result = {
        "what": "scikit-learn RandomForestClassifier test ROC AUC on segflow's Telco split (benches/telco_churn_golden.sh)",
        "sklearn_version": sklearn.__version__,
        "train_customers": int((~test).sum()),
        "test_customers": int(test.sum()),
        "test_ids_sha256": hashlib.sha256("\n".join(test_ids).encode()).hexdigest(),
        "settings": {"n_estimators": 200, "max_features": "sqrt", "min_samples_leaf": 5, "bootstrap": True},
        "seeds": list(SEEDS),
        "test_roc_auc_per_seed": aucs,
        "test_roc_auc_mean": float(np.mean(aucs)),
        "test_roc_auc_std": float(np.std(aucs)),
    }
    with open(out_path, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(json.dumps({k: result[k] for k in ("test_customers", "test_roc_auc_mean", "test_roc_auc_std")}))


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
