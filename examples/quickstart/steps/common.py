"""Helpers shared by the quickstart steps: CSV loading and the logistic model."""
import csv
import math


def load(path):
    with open(path) as f:
        r = csv.reader(f)
        next(r)
        xs, ys = [], []
        for row in r:
            xs.append([float(v) for v in row[:-1]])
            ys.append(int(row[-1]))
    return xs, ys


def predict(model, x):
    z = model["bias"] + sum(w * v for w, v in zip(model["weights"], x))
    return 1.0 / (1.0 + math.exp(-max(min(z, 30.0), -30.0)))


def accuracy(model, xs, ys):
    hits = sum(1 for x, y in zip(xs, ys) if (predict(model, x) >= 0.5) == (y == 1))
    return hits / len(ys)
