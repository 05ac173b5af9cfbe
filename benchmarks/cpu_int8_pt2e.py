"""int8 on CPU through PyTorch's PT2E flow (torchao's X86InductorQuantizer -> oneDNN int8 kernels, AMX where the
CPU has it) against the bf16 default path: speed, score drift and ranking agreement on the same pairs.

A probe, not a product path: the whole backbone is exported, activations are calibrated on the first batches of
the workload itself (a real mode would need the user's calibration pairs), and the head runs in float32.

    pip install torchao
    python benchmarks/cpu_int8_pt2e.py --model-dir /tmp/pixie-4l [--dynamic]

The model folder is built (random PIXIE-shaped weights, 4 layers) if missing. Prints the timings, the largest score
difference against float32 and Kendall tau per query.
"""

import argparse
import time

import torch
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from pixie_integrations import PixieScorer
from pixie_integrations.benchmark import build_random_model, build_workload, kendall_tau
from pixie_integrations.runner import _pad

parser = argparse.ArgumentParser(allow_abbrev=False)
parser.add_argument("--model-dir", required=True)
parser.add_argument("--dynamic", action="store_true", help="dynamic activation quantization (no calibration)")
args = parser.parse_args()
path = str(build_random_model("pixie-4l", args.model_dir))
work = build_workload("beir", AutoTokenizer.from_pretrained(path), queries=2, docs_per_query=24)
fp32 = PixieScorer(path, device="cpu", dtype="float32", reuse_prefix=False)
bf16 = PixieScorer(path, device="cpu", dtype="bfloat16", reuse_prefix=False)
ref = [s for q, d in zip(work.queries, work.documents) for s in fp32.score(q, d, raw=True)]
enc = fp32._encoder.encode([(q, x) for q, d in zip(work.queries, work.documents) for x in d], fp32.instruction)[0]
plan = fp32._plan(enc)
batches = [([enc[i].input_ids for i in b], b) for b, _ in plan]

model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
backbone = model.model
w = model.score.weight.detach().float().reshape(-1)


class Body(torch.nn.Module):
    def __init__(self, b):
        super().__init__()
        self.b = b

    def forward(self, ids):
        return self.b(input_ids=ids, use_cache=False).last_hidden_state


body = Body(backbone)
ids, _, lengths = _pad(max(batches, key=lambda b: len(b[0]))[0], 0)
B = torch.export.Dim("B", min=1, max=1024)
L = torch.export.Dim("L", min=2, max=4096)
t = time.time()
ep = torch.export.export(body, (ids,), dynamic_shapes={"ids": {0: B, 1: L}}, strict=False)
print("export", time.time() - t, flush=True)
q = xiq.X86InductorQuantizer()
dyn = args.dynamic
q.set_global(xiq.get_default_x86_inductor_quantization_config(is_dynamic=dyn))
prepared = prepare_pt2e(ep.module(), q)
with torch.no_grad():
    for rows, _ in batches[:6]:
        prepared(_pad(rows, 0)[0])
converted = convert_pt2e(prepared)
for node in list(converted.graph.nodes):
    if node.target is torch.ops.aten._assert_tensor_metadata.default:
        converted.graph.erase_node(node)
converted.recompile()
torch._inductor.config.freezing = True
with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
    comp = torch.compile(converted, dynamic=True)
    t = time.time()
    for rows, _ in batches:
        comp(_pad(rows, 0)[0])
    print("compile+first", time.time() - t, flush=True)


def run_int8():
    out = torch.empty(len(enc))
    with torch.no_grad():
        for rows, idx in batches:
            ids, _, lengths = _pad(rows, 0)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                h = comp(ids)
            out[idx] = h[torch.arange(len(rows)), lengths - 1].float() @ w
    return out


def run_bf16():
    return bf16._run(enc)


for rep in range(2):
    t = time.time()
    a = run_bf16()
    tb = time.time() - t
    t = time.time()
    b = run_int8()
    ti = time.time() - t
    print(f"bf16 {tb:.2f}s int8 {ti:.2f}s ratio {tb / ti:.2f}", flush=True)
r = torch.tensor(ref)
print("max logit diff bf16", (a - r).abs().max().item(), "int8", (b - r).abs().max().item())
n = len(work.documents[0])
for name, x in (("bf16", a), ("int8", b)):
    taus = [kendall_tau(x[i : i + n].tolist(), r[i : i + n].tolist()) for i in range(0, len(r), n)]
    print(name, "Kendall tau per query vs fp32:", [round(t, 4) for t in taus])
print(
    "max prob diff bf16",
    (torch.sigmoid(a) - torch.sigmoid(r)).abs().max().item(),
    "int8",
    (torch.sigmoid(b) - torch.sigmoid(r)).abs().max().item(),
)
