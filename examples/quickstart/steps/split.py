"""Shuffle a CSV dataset and split it into train and test sets."""
import argparse
import random

parser = argparse.ArgumentParser()
parser.add_argument("--data", required=True)
parser.add_argument("--test-fraction", type=float, default=0.25)
parser.add_argument("--seed", type=int, default=7)
parser.add_argument("--train", required=True)
parser.add_argument("--test", required=True)
args = parser.parse_args()

with open(args.data) as f:
    header, *rows = f.read().splitlines()
random.Random(args.seed).shuffle(rows)
n_test = int(len(rows) * args.test_fraction)
for path, part in ((args.test, rows[:n_test]), (args.train, rows[n_test:])):
    with open(path, "w") as f:
        f.write("\n".join([header, *part]) + "\n")
print(f"train={len(rows) - n_test} test={n_test}")
