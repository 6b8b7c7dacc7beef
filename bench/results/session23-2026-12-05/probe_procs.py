"""Two processes on one core each, each running its half of the batch through a 1-thread package, against
one process running the whole batch through a 2-thread package. Chains of model calls + a DDIM-like update."""
import os, sys, time, statistics, subprocess
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[3]))
from diffusion_core.allocator import reexec_with_fast_malloc
if __name__ == "__main__":
    reexec_with_fast_malloc()
import torch
from pathlib import Path
C = Path.home() / ".cache/diffusion-explorer/compiled"
def pkg(t, b):
    return torch._inductor.aoti_load_package(str(next(C.glob(f"mnist-linear-6027*-bfloat16-aoti-4-*-t{t}-b{b}.pt2"))))
D = 464
def chain(run, b, steps):
    x = torch.randn(b, 1, 28, 28); c = (torch.randn(b, D) * 0.1).bfloat16()
    for _ in range(steps):
        eps = run(x.bfloat16(), c).float()
        x = x * 0.99 + 0.01 * eps
    return x
if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "worker":
    t, b, steps, cpu = map(int, sys.argv[2:6])
    if cpu >= 0: os.sched_setaffinity(0, {cpu})
    torch.set_num_threads(t); run = pkg(t, b)
    with torch.inference_mode():
        chain(run, b, 3)
        sys.stdout.write("ready\n"); sys.stdout.flush()
        sys.stdin.readline()
        t0 = time.perf_counter(); chain(run, b, steps); dt = time.perf_counter() - t0
    print(dt, flush=True)
elif __name__ == "__main__":
    def launch(t, b, steps, cpu):
        return subprocess.Popen([sys.executable, __file__, "worker", str(t), str(b), str(steps), str(cpu)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    def run_group(specs):
        ps = [launch(*s) for s in specs]
        for p in ps: assert p.stdout.readline().strip() == "ready"
        t0 = time.perf_counter()
        for p in ps: p.stdin.write("go\n"); p.stdin.flush()
        own = [float(p.stdout.readline()) for p in ps]
        wall = time.perf_counter() - t0
        for p in ps: p.wait()
        return max(own)
    for b, steps in ((16, 50), (4, 400)):
        one, two = [], []
        for r in range(5):
            one.append(run_group([(2, b, steps, -1)]))
            two.append(run_group([(1, b // 2, steps, 0), (1, b // 2, steps, 1)]))
        print(f"batch {b}: one process, 2 threads {1e3*statistics.median(one)/steps:.3f} ms/step; "
              f"two processes, 1 thread, pinned {1e3*statistics.median(two)/steps:.3f} ms/step; "
              f"ratio {statistics.median(one)/statistics.median(two):.2f}x", flush=True)
