"""Real-time factor of speaker-embedding extraction (fbank + encoder) for 10 s utterances.

Compares, in one run and on the same input, plain eager fp32 PyTorch with the optimised
path (``cdino.models.inference.optimize_for_inference``: BatchNorm folded, TorchScript
frozen) and with ONNX Runtime (the encoder exported by ``cdino export``), on CPU with 1
and 2 threads, plus CUDA when there is a GPU. Real-time factor = seconds of compute per
second of audio (lower is faster). Prints one JSON object.

    python bench/bench_embed.py [--encoder ecapa_tdnn] [--seconds 10] [--repeats 7] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cdino.api import export_onnx, save_model_folder
from cdino.frontend.fbank import Fbank, FbankConfig
from cdino.models.inference import optimize_for_inference
from cdino.models.registry import EncoderConfig, build_encoder, count_parameters


def _interleaved_seconds(fns: dict, repeats: int, warmup: int = 2, sync=None) -> dict[str, dict]:
    """Time each function ``repeats`` times, taking turns, so that a change of machine load
    during the run hits every variant alike; returns median and min seconds per variant."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if sync:
                sync()
            t0 = time.perf_counter()
            fn()
            if sync:
                sync()
            times[name].append(time.perf_counter() - t0)
    return {k: {"median": statistics.median(v), "min": min(v)} for k, v in times.items()}


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def bench(encoder_name: str = "ecapa_tdnn", seconds: float = 10.0, repeats: int = 7,
          threads: tuple[int, ...] = (1, 2)) -> dict:
    import onnxruntime as ort

    torch.manual_seed(0)
    cfg = EncoderConfig(name=encoder_name)
    eager = build_encoder(cfg).eval()
    fbank = Fbank(FbankConfig()).eval()
    rng = np.random.default_rng(0)
    wave = torch.from_numpy((0.1 * rng.standard_normal(int(16000 * seconds))).astype(np.float32))[None]
    optimised = optimize_for_inference(eager, n_mels=cfg.n_mels)

    with tempfile.TemporaryDirectory() as tmp:
        folder = save_model_folder(Path(tmp) / "model", eager, cfg, FbankConfig(),
                                   np.zeros(eager.embed_dim, np.float32), 0.0, "benchmark")
        onnx_path = export_onnx(folder, Path(tmp) / "encoder.onnx")
        sessions = {}
        for n in threads:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = n
            opts.inter_op_num_threads = 1
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            sessions[n] = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])

    def run_torch(model):
        with torch.inference_mode():
            return model(fbank(wave))

    def run_ort(session):
        with torch.inference_mode():
            feats = fbank(wave).numpy()
        return session.run(["embs"], {"feats": feats})[0]

    ref = run_torch(eager).numpy()
    result = {
        "what": f"real-time factor of fbank + {encoder_name} embedding, one {seconds:g} s utterance "
                "(compute seconds per audio second; lower is faster), median of repeats",
        "encoder": encoder_name, "parameters": count_parameters(eager), "seconds": seconds,
        "repeats": repeats, "timing": "variants interleaved; rtf from the median, rtf_best from the fastest run", "torch": torch.__version__, "onnxruntime": ort.__version__,
        "machine": platform.processor() or platform.machine(),
        "parity_cosine": {"optimised_vs_eager": _cosine(run_torch(optimised).numpy(), ref),
                          "onnxruntime_vs_eager": _cosine(run_ort(sessions[threads[0]]), ref)},
        "cpu": {},
    }
    previous = torch.get_num_threads()
    try:
        for n in threads:
            torch.set_num_threads(n)
            t = _interleaved_seconds({"eager_fp32": lambda: run_torch(eager),
                                      "optimised": lambda: run_torch(optimised),
                                      "onnxruntime": lambda: run_ort(sessions[n])}, repeats)
            rtf = {k: v["median"] / seconds for k, v in t.items()}
            best = {k: v["min"] / seconds for k, v in t.items()}
            result["cpu"][f"{n}_thread{'s' if n > 1 else ''}"] = {
                "rtf": {k: round(v, 5) for k, v in rtf.items()},
                "rtf_best": {k: round(v, 5) for k, v in best.items()},
                "speedup_vs_eager": {k: round(rtf["eager_fp32"] / rtf[k], 3)
                                     for k in ("optimised", "onnxruntime")},
            }
    finally:
        torch.set_num_threads(previous)

    if torch.cuda.is_available():
        dev = torch.device("cuda")
        eager_gpu = build_encoder(cfg).eval().to(dev)
        eager_gpu.load_state_dict(eager.state_dict())
        fbank_gpu = Fbank(FbankConfig()).to(dev)
        opt_gpu = optimize_for_inference(eager_gpu, n_mels=cfg.n_mels)
        wave_gpu = wave.to(dev)

        def run_gpu(model, amp=False):
            with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16, enabled=amp):
                return model(fbank_gpu(wave_gpu))

        t = _interleaved_seconds({"eager_fp32": lambda: run_gpu(eager_gpu),
                                  "optimised": lambda: run_gpu(opt_gpu),
                                  "eager_bf16": lambda: run_gpu(eager_gpu, True)},
                                 repeats * 3, warmup=5, sync=torch.cuda.synchronize)
        result["cuda"] = {"device": torch.cuda.get_device_name(0),
                          "rtf": {k: round(v["median"] / seconds, 6) for k, v in t.items()},
                          "parity_cosine": {
                              "optimised_vs_cpu_eager": _cosine(run_gpu(opt_gpu).float().cpu().numpy(), ref),
                              "bf16_vs_cpu_eager": _cosine(run_gpu(eager_gpu, True).float().cpu().numpy(), ref)}}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="ecapa_tdnn")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    result = bench(args.encoder, args.seconds, args.repeats)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
