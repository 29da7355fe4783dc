"""The README's API example (tests/test_readme.py checks that the README holds exactly this code and runs it)."""
import torch
import torch.nn as nn

from nni_splitting import apply_splits, compute_splitting, count_model, select_neurons
from nni_splitting.common.data import load_dataset, make_loaders
from nni_splitting.models import build_model, current_widths

torch.manual_seed(0)
data = load_dataset("digits")                       # scikit-learn's 8x8 digits: no files needed
train_loader, val_loader, test_loader = make_loaders(data, batch_size=64)
model = build_model("small_cnn", widths=[4, 8, 8], in_channels=1, num_classes=10)

optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
for epoch in range(3):                              # Algorithm 1, step 1: ordinary training
    for x, y in train_loader:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

model.eval()
splits = compute_splitting(model, nn.CrossEntropyLoss(), train_loader, method="exact")  # step 2
for name, layer in splits.items():
    print(f"{name:24s} lambda_min = {layer.eigenvalues.min():+.4f}  d = {layer.directions.shape[1]}")
plan = select_neurons(splits, max_splits=4, threshold=0.0)                               # step 3
grown = apply_splits(model, splits, plan, epsilon=1e-2)                                  # step 4
dummy = next(iter(test_loader))[0][:1]
print("plan:", plan)
print("widths:", current_widths(model), "->", current_widths(grown))
print("params:", count_model(model, dummy)[1], "->", count_model(grown, dummy)[1])
