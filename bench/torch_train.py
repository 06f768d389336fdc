"""PyTorch baseline for `make bench`: the trainer's MLP (18-16-8-16-18, relu, linear output),
AdamW(lr=1e-3, weight_decay=0.01), batch 64, mean squared reconstruction error, on the same
number of synthetic rows and epochs, with the thread count given. Prints samples/s.

usage: torch_train.py ROWS EPOCHS THREADS
"""

import sys
import time

import torch

rows, epochs, threads = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
torch.manual_seed(1)
data = torch.rand(rows, 18) * 4 - 2
model = torch.nn.Sequential(
    torch.nn.Linear(18, 16), torch.nn.ReLU(),
    torch.nn.Linear(16, 8), torch.nn.ReLU(),
    torch.nn.Linear(8, 16), torch.nn.ReLU(),
    torch.nn.Linear(16, 18),
)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
started = time.perf_counter()
for _ in range(epochs):
    order = torch.randperm(rows)
    for i in range(0, rows, 64):
        batch = data[order[i:i + 64]]
        loss = ((model(batch) - batch) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()  # Kappa reads the loss every batch too
    with torch.no_grad():
        ((model(data[:1000]) - data[:1000]) ** 2).mean().item()
print(f"{rows * epochs / (time.perf_counter() - started):.0f}")
