"""Evaluate every trained model on the test set, write metrics, and keep the best model."""
import argparse
import json
import shutil

from common import load, predict

parser = argparse.ArgumentParser()
parser.add_argument("--models", required=True, help="JSON list of model paths (fan-in)")
parser.add_argument("--test", required=True)
parser.add_argument("--metrics", required=True)
parser.add_argument("--best-model", required=True)
parser.add_argument("--best-accuracy", required=True)
args = parser.parse_args()

xs, ys = load(args.test)
results = []
for path in json.loads(args.models):
    with open(path) as f:
        model = json.load(f)
    tp = fp = tn = fn = 0
    for x, y in zip(xs, ys):
        p = predict(model, x) >= 0.5
        if p and y == 1:
            tp += 1
        elif p:
            fp += 1
        elif y == 1:
            fn += 1
        else:
            tn += 1
    acc = (tp + tn) / len(ys)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    results.append({"model": path, "lr": model["lr"], "accuracy": acc, "precision": precision,
                    "recall": recall, "f1": f1, "confusion_matrix": [[tn, fp], [fn, tp]]})
    print(f"lr={model['lr']} accuracy={acc:.4f} f1={f1:.4f}")

best = max(results, key=lambda r: r["accuracy"])
with open(args.metrics, "w") as f:
    json.dump({"models": results, "best": best}, f, indent=2)
shutil.copyfile(best["model"], args.best_model)
with open(args.best_accuracy, "w") as f:
    f.write(f"{best['accuracy']:.6f}\n")
print(f"best lr={best['lr']} accuracy={best['accuracy']:.4f}")
