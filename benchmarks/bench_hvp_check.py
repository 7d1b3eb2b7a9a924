"""Per-product cost of the input check of HessianOperator.matvec (issue 11).

The solvers call ``matvec(v, check=False)``: no per-tensor shape/finiteness test of the input
(the core checks the product's two scalars instead). This times one kept-graph product on the
MLP 784-128-10 with 128 MNIST-sized samples, checked and unchecked, alternating, 7 repeats of
50 products, one torch thread; prints the medians.

Run:  python benchmarks/bench_hvp_check.py
"""
import time, statistics, torch, torch.nn.functional as F
from hessbatch.deep import HessianOperator, MLP
torch.set_num_threads(1); torch.manual_seed(0)
m = MLP((1,28,28), 10, hidden=(128,)); x, y = torch.rand(128,1,28,28), torch.randint(10,(128,))
op = HessianOperator(m, F.cross_entropy, [(x,y)])
v = [torch.randn_like(p) for p in op.params]
res = {True: [], False: []}
for rep in range(7):
    for chk in (True, False):
        t0 = time.perf_counter()
        for _ in range(50): op.matvec(v, check=chk)
        res[chk].append((time.perf_counter()-t0)/50*1e3)
a, b = statistics.median(res[True]), statistics.median(res[False])
print(f"checked {a:.3f} ms, unchecked {b:.3f} ms, ratio {b/a:.3f}")
