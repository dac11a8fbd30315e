import time, sys, torch, torch.nn.functional as F
sys.path.insert(0, ".")
from cdino.models.registry import EncoderConfig, build_encoder, VARIANTS
from cdino.models.aam_softmax import AAMSoftmax
from cdino.models.dino_head import DinoHead
from cdino.models.inference import optimize_for_inference
print(torch.__version__, torch.cuda.get_device_name(0), flush=True)
dev = "cuda"
torch.manual_seed(0)
for name in VARIANTS:
    enc = build_encoder(EncoderConfig(name=name, embed_bn=True)).to(dev)
    x = torch.randn(16, 200, 80, device=dev)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = enc(x)
    y.float().pow(2).mean().backward()
    ok = all(torch.isfinite(p.grad).all().item() for p in enc.parameters() if p.grad is not None)
    enc.eval()
    with torch.no_grad():
        ref = enc(x)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            low = enc(x)
        fast = optimize_for_inference(enc)
        cf = F.cosine_similarity(ref, fast(x)).min().item()
        fast2 = fast(torch.randn(3, 333, 80, device=dev))
    print(name, "grads finite", ok, "bf16 cos", F.cosine_similarity(ref, low.float()).min().item(),
          "opt cos", cf, type(fast).__name__, tuple(fast2.shape), flush=True)
aam = AAMSoftmax(192, 6000).to(dev)
e = torch.randn(128, 192, device=dev); lab = torch.randint(0, 6000, (128,), device=dev)
with torch.autocast("cuda", dtype=torch.bfloat16):
    lo = aam(e.bfloat16(), lab)
print("aam dtype", lo.dtype, "diff vs fp32", (lo - aam(e, lab)).abs().max().item(), flush=True)
head = DinoHead(192).to(dev)
with torch.autocast("cuda", dtype=torch.bfloat16):
    z = head(e)
print("dino head", z.shape, z.dtype, z.float().abs().max().item(), flush=True)

def step_rate(model, batch, frames, amp, n=10):
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(batch, frames, 80, device=dev)
    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            loss = model(x).float().pow(2).mean()
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    for _ in range(3): step()
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(n): step()
    torch.cuda.synchronize(); return batch * n / (time.perf_counter() - t)

enc = build_encoder(EncoderConfig(embed_bn=True)).to(dev).train()
print("ECAPA-512 fwd+bwd utt/s (128x200): fp32", round(step_rate(enc, 128, 200, False)),
      "bf16", round(step_rate(enc, 128, 200, True)), flush=True)
try:
    t = time.time()
    comp = torch.compile(enc)
    r = step_rate(comp, 128, 200, True)
    print("compiled bf16", round(r), "compile+run s", round(time.time() - t), flush=True)
except Exception as ex:
    print("compile failed:", type(ex).__name__, str(ex)[:300], flush=True)
