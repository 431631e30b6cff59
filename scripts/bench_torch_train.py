#!/usr/bin/env python3
"""PyTorch's 128-image training step on the shared convnet architecture, fp32 and QAT, for a same-run
comparison with perch's bench_train (docs/BENCHMARKS.md). A benchmark anchor only: perch itself never uses
Python. Needs Debian's python3-torch (1.13, the version ../shared/ANCHORS.md was measured with).

The network is the one fmnist_convnet.onnx was exported from (conv 1->32->64->64, 3x3 pad 1, each followed by
BatchNorm, ReLU and a 2x2 max-pool; fc 576->128, ReLU, fc 128->10). `--no-bn` drops the BatchNorms (the
shared ONNX file has them folded, which is what perch's BM_SharedStep trains). QAT: eager-mode
torch.ao.quantization with conv+bn+relu fused and the default 'fbgemm' QAT qconfig (per-channel symmetric
int8 weights, per-tensor uint8 activations with moving-average ranges).

  python3 scripts/bench_torch_train.py [--threads 2] [--steps 30] [--no-bn]
"""
import argparse
import statistics
import time

import torch
import torch.nn as nn
import torch.ao.quantization as tq


class Net(nn.Module):
    def __init__(self, bn: bool):
        super().__init__()
        layers = []
        cin = 1
        for cout in (32, 64, 64):
            layers += [nn.Conv2d(cin, cout, 3, padding=1)]
            if bn:
                layers += [nn.BatchNorm2d(cout)]
            layers += [nn.ReLU(), nn.MaxPool2d(2)]
            cin = cout
        self.f = nn.Sequential(*layers)
        self.fc1 = nn.Linear(576, 128)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(128, 10)
        self.quant = tq.QuantStub()
        self.dequant = tq.DeQuantStub()

    def forward(self, x):
        x = self.quant(x)
        x = self.f(x).flatten(1)
        x = self.fc2(self.relu(self.fc1(x)))
        return self.dequant(x)


def fuse(net: Net, bn: bool):
    groups, i, mods = [], 0, list(net.f)
    while i < len(mods):
        if isinstance(mods[i], nn.Conv2d):
            n = 3 if bn else 2
            groups.append([str(i + k) for k in range(n)])
            i += n
        else:
            i += 1
    groups = [["f." + g for g in grp] for grp in groups] + [["fc1", "relu"]]
    return tq.fuse_modules_qat(net, groups) if hasattr(tq, "fuse_modules_qat") else tq.fuse_modules(net, groups)


def time_steps(net, steps):
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(128, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (128,), generator=g)
    net.train()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3, min(times) * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--no-bn", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    bn = not a.no_bn
    fp32 = Net(bn)
    med, best = time_steps(fp32, a.steps)
    print(f"torch {torch.__version__} threads {a.threads} bn {bn}: fp32 step median {med:.1f} ms (min {best:.1f})")
    qat = Net(bn)
    qat.eval()
    qat = fuse(qat, bn)
    qat.qconfig = tq.get_default_qat_qconfig("fbgemm")
    qat.train()
    tq.prepare_qat(qat, inplace=True)
    med, best = time_steps(qat, a.steps)
    print(f"torch {torch.__version__} threads {a.threads} bn {bn}: QAT  step median {med:.1f} ms (min {best:.1f})")


if __name__ == "__main__":
    main()
