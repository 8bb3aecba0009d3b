"""Train a logistic regression by batch gradient descent and save it as JSON."""
import argparse
import json

from common import accuracy, load, predict

parser = argparse.ArgumentParser()
parser.add_argument("--train", required=True)
parser.add_argument("--lr", type=float, required=True)
parser.add_argument("--epochs", type=int, default=60)
parser.add_argument("--model", required=True)
args = parser.parse_args()

xs, ys = load(args.train)
n, d = len(xs), len(xs[0])
model = {"weights": [0.0] * d, "bias": 0.0}
for epoch in range(args.epochs):
    gw, gb = [0.0] * d, 0.0
    for x, y in zip(xs, ys):
        err = predict(model, x) - y
        for j in range(d):
            gw[j] += err * x[j]
        gb += err
    model["weights"] = [w - args.lr * g / n for w, g in zip(model["weights"], gw)]
    model["bias"] -= args.lr * gb / n
    if epoch % 20 == 0 or epoch == args.epochs - 1:
        print(f"epoch {epoch} train_accuracy={accuracy(model, xs, ys):.4f}", flush=True)
model["lr"] = args.lr
model["epochs"] = args.epochs
with open(args.model, "w") as f:
    json.dump(model, f)
