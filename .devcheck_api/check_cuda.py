"""One-off CUDA check of cdino.eval.embed / cdino.api (not part of the project)."""
import json, sys, time, tempfile
from pathlib import Path
import numpy as np, soundfile as sf, torch

from cdino.api import load_model, run_eval, save_model_folder
from cdino.data.kaldi_dir import write_data_dir
from cdino.eval.embed import extract_embeddings
from cdino.frontend.fbank import Fbank, FbankConfig
from cdino.models.registry import EncoderConfig, build_encoder

out = {"torch": torch.__version__, "cuda": torch.cuda.is_available()}
root = Path(tempfile.mkdtemp())
rng = np.random.default_rng(0)
wav, spk = {}, {}
for i in range(60):
    n = [32000, 48000, 48050, 64000][i % 4] + (0 if i % 3 else 160 * (i % 7))
    s = i % 6
    t = np.arange(n) / 16000
    x = sum(np.sin(2 * np.pi * k * (90 + 30 * s) * t + rng.uniform(0, 6)) / k for k in range(1, 10))
    x = 0.1 * x + 0.02 * rng.standard_normal(n)
    p = root / f"u{i}.wav"
    sf.write(p, x.astype(np.float32), 16000)
    wav[f"u{i}"], spk[f"u{i}"] = p, f"s{s}"
data = write_data_dir(root / "data", wav, spk)
utts = list(wav)
lines = [f"{a} {b} {'target' if spk[a] == spk[b] else 'nontarget'}" for i, a in enumerate(utts) for b in utts[i + 1:]]
(root / "trials").write_text("\n".join(lines) + "\n")

torch.manual_seed(0)
cfg = EncoderConfig(name="ecapa_tdnn")
enc = build_encoder(cfg)
for m in enc.modules():
    if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
        m.running_mean.uniform_(-0.1, 0.1); m.running_var.uniform_(0.5, 1.5)
enc.eval()

def cos(a, b):
    a = a.astype(np.float64); b = b.astype(np.float64)
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())

t0 = time.time(); u_cpu, e_cpu = extract_embeddings(enc, Fbank(), data, device="cpu", progress=False); out["cpu_extract_s"] = time.time() - t0
dev = "cuda"
enc_gpu = build_encoder(cfg).eval(); enc_gpu.load_state_dict(enc.state_dict()); enc_gpu.to(dev)
for amp in (False, True):
    extract_embeddings(enc_gpu, Fbank(), data, device=dev, progress=False, amp=amp)
    torch.cuda.synchronize(); t0 = time.time()
    u, e = extract_embeddings(enc_gpu, Fbank(), data, device=dev, progress=False, amp=amp)
    out[f"cuda_extract_s_amp{amp}"] = time.time() - t0
    out[f"min_cos_cuda_vs_cpu_amp{amp}"] = cos(e, e_cpu)
    assert u == u_cpu
torch.backends.cudnn.allow_tf32 = False; torch.backends.cuda.matmul.allow_tf32 = False
u, e = extract_embeddings(enc_gpu, Fbank(), data, device=dev, progress=False)
out["min_cos_cuda_vs_cpu_no_tf32"] = cos(e, e_cpu)
torch.backends.cudnn.allow_tf32 = True
# batched vs one-by-one on CUDA, and sharded resume
_, e_single = extract_embeddings(enc_gpu, Fbank(), data, device=dev, progress=False, batch_frames=1)
out["min_cos_cuda_batched_vs_single"] = cos(e, e_single)
calls = []
def stop(i):
    if i == 2: raise KeyboardInterrupt
try:
    extract_embeddings(enc_gpu, Fbank(), data, out_dir=root / "emb", device=dev, shard_size=10, progress=False, on_shard=stop)
except KeyboardInterrupt:
    pass
u2, e2 = extract_embeddings(enc_gpu, Fbank(), data, out_dir=root / "emb", device=dev, shard_size=10, progress=False)
out["resume_ok"] = u2 == u_cpu and cos(e2, e_cpu) > 0.999

mean = e_cpu.mean(0)
folder = save_model_folder(root / "model", enc, cfg, FbankConfig(), mean, 0.3, "check")
res = {}
for device in ("cpu", "cuda"):
    for opt in (False, True):
        m = load_model(folder, device=device, optimize=opt)
        res[f"{device}_opt{opt}_score"] = m.score(str(wav["u0"]), str(wav["u6"]))
        res[f"{device}_opt{opt}_eval"] = run_eval(folder, data, root / "trials", root / f"r_{device}_{opt}.json",
                                                  device=device, optimize=opt, progress=False)
out["api"] = res
print(json.dumps(out, indent=1))
