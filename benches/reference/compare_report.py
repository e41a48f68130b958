"""Prints one data set's side-by-side table for benches/compare.sh (markdown, to stdout).

Usage: compare_report.py SET OUT, where OUT holds segflow.time, segflow.json and the segflow
output root `segflow/`, and, unless the reference was skipped, reference.time and
reference.json (written by benches/reference/pipeline.py).

segflow's SQL stages are lazy: their work is done by the first stage that reads their rows
(the segment stage reads the customer features), so its per-stage seconds are reported as the
pipeline logged them, grouped as the reference's stages are where that is meaningful.
"""

import glob
import json
import re
import sys
from pathlib import Path


def time_report(path: Path) -> dict:
    """Wall seconds and peak RSS (MiB) from a `/usr/bin/time -v` report."""
    text = path.read_text()
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", text).group(1)
    seconds = 0.0
    for part in wall.split(":"):
        seconds = seconds * 60 + float(part)
    rss_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
    status = int(re.search(r"Exit status: (\d+)", text).group(1))
    return {"wall": seconds, "rss_mib": rss_kib / 1024, "exit": status}


def segflow_side(out: Path) -> dict:
    run = json.loads(Path(glob.glob(str(out / "segflow/_segflow/runs/*/run_results.json"))[0]).read_text())
    stages = {s["name"]: s["seconds"] for s in run["stages"]}
    kinds = {s["name"]: s["kind"] for s in run["stages"]}
    grouped = {"read + clean": 0.0, "features + segment": 0.0, "churn": 0.0}
    for name, seconds in stages.items():
        kind = kinds[name]
        # Inputs are read lazily: by the clean stage, which scans them.
        key = "read + clean" if kind == "clean" else "churn" if kind == "churn" else "features + segment"
        grouped[key] += seconds
    grouped["write"] = run["seconds"] - sum(stages.values())
    metrics = json.loads(Path(glob.glob(str(out / "segflow/reports/*/evaluation.json"))[0]).read_text())["metrics"]

    def metric(model, split, name, **keys):
        for m in metrics:
            if m["model"] == model and m["split"] == split and m["metric"] == name and all(m.get(k) == v for k, v in keys.items()):
                return m["value"]
        return None

    k = metric("kmeans", "all", "k")
    quality = {
        "k": k,
        "inertia": metric("kmeans", "all", "inertia", k=k),
        "silhouette": metric("kmeans", "all", "silhouette", k=k),
        "test_roc_auc": metric("random_forest", "test", "roc_auc"),
        "baseline_test_roc_auc": metric("decision_tree", "test", "roc_auc"),
    }
    return {"stages": grouped, "run_seconds": run["seconds"], "quality": quality}


def reference_side(out: Path) -> dict | None:
    path = out / "reference.json"
    if not path.exists():
        return None
    result = json.loads(path.read_text())
    stages = result["stages"]
    grouped = {
        "read + clean": stages.get("read", 0) + stages.get("clean", 0),
        "features + segment": stages.get("features", 0) + stages.get("segment", 0),
        "churn": stages.get("churn", 0),
        "write": stages.get("write", 0),
    }
    return {"stages": grouped, "run_seconds": result["total_seconds"], "quality": result["quality"], "versions": result.get("versions", {})}


def fmt(value, digits=3):
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1e5 else f"{value:.6g}"
    return str(value)


def main() -> None:
    name, out = sys.argv[1], Path(sys.argv[2])
    seg_time = time_report(out / "segflow.time")
    seg = segflow_side(out) if seg_time["exit"] == 0 else None
    ref_time = time_report(out / "reference.time") if (out / "reference.time").exists() else None
    ref = reference_side(out) if ref_time and ref_time["exit"] == 0 else None

    print(f"## {name}\n")
    if seg is None:
        print(f"segflow FAILED (exit {seg_time['exit']}); see {out / 'segflow.log'}\n")
        return
    if ref_time and ref is None:
        print(f"the Python reference FAILED (exit {ref_time['exit']}); see {out / 'reference.log'}\n")
    print("| | segflow | Python reference | ratio |")
    print("|---|---:|---:|---:|")

    def row(label, a, b, digits=2, ratio=True):
        r = f"{a / b:.2f}×" if ratio and a is not None and b not in (None, 0) else ""
        print(f"| {label} | {fmt(a, digits)} | {fmt(b, digits)} | {r} |")

    for stage, seconds in seg["stages"].items():
        row(f"{stage} (s)", seconds, ref["stages"][stage] if ref else None)
    row("**total wall (s)**, /usr/bin/time", seg_time["wall"], ref_time["wall"] if ref else None)
    row("**peak RSS (MiB)**", seg_time["rss_mib"], ref_time["rss_mib"] if ref else None, digits=0)
    for key, digits in [("k", 0), ("inertia", 1), ("silhouette", 3), ("test_roc_auc", 4), ("baseline_test_roc_auc", 4)]:
        row(key, seg["quality"].get(key), ref["quality"].get(key) if ref else None, digits=digits, ratio=False)
    if ref and ref.get("versions"):
        print("\nreference: " + ", ".join(f"{k} {v}" for k, v in sorted(ref["versions"].items())))
    print()


if __name__ == "__main__":
    main()
