"""Register the best model: write a model card next to it."""
import argparse
import json

parser = argparse.ArgumentParser()
parser.add_argument("--model", required=True)
parser.add_argument("--metrics", required=True)
parser.add_argument("--card", required=True)
args = parser.parse_args()

with open(args.model) as f:
    model = json.load(f)
with open(args.metrics) as f:
    best = json.load(f)["best"]
card = f"""# Model card: quickstart logistic regression

- learning rate: {model['lr']}
- epochs: {model['epochs']}
- test accuracy: {best['accuracy']:.4f}
- precision / recall / f1: {best['precision']:.4f} / {best['recall']:.4f} / {best['f1']:.4f}
- weights: {', '.join(f'{w:.4f}' for w in model['weights'])}; bias: {model['bias']:.4f}
"""
with open(args.card, "w") as f:
    f.write(card)
print(f"registered model lr={model['lr']} accuracy={best['accuracy']:.4f}")
