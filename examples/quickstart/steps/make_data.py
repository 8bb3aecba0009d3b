"""Generate a binary classification dataset: two Gaussian blobs in 4 dimensions, as CSV."""
import argparse
import csv
import random

parser = argparse.ArgumentParser()
parser.add_argument("--rows", type=int, required=True)
parser.add_argument("--seed", type=int, default=7)
parser.add_argument("--out", required=True)
args = parser.parse_args()

rng = random.Random(args.seed)
centers = {0: [-1.0, -0.5, 0.0, 0.5], 1: [1.0, 0.5, 0.5, -0.5]}
with open(args.out, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["x1", "x2", "x3", "x4", "label"])
    for _ in range(args.rows):
        label = rng.randint(0, 1)
        row = [round(c + rng.gauss(0, 1.2), 5) for c in centers[label]]
        w.writerow(row + [label])
print(f"wrote {args.rows} rows to {args.out}")
