"""Label-free alignment of a trained model to a new domain, before any training on it.

A model trained on one domain (interviews, wideband) meets another (telephone calls in
other languages): its BatchNorm layers normalise with the old domain's statistics, its
scores are centred on the old domain's mean embedding, and its calibration maps the old
domain's score distribution. Three steps fix that without a label and without a gradient:

* **target BatchNorm statistics** (AdaBN, Li et al. 2016): every BatchNorm layer's running
  mean and variance re-estimated as the plain average over random crops of the target
  recordings (``momentum=None``), the weights left alone;
* **target centring**: the mean embedding subtracted before cosine scoring is the target
  recordings' (in the model folder's ``mean.npy``);
* **target threshold and calibration**: fitted on pseudo-label trials of the target
  recordings, as every export does on its own training data.

:func:`align_to_domain` writes the aligned model folder; the adaptation recipe evaluates it
on its own and starts its pseudo-label rounds from it.
"""

from __future__ import annotations

from pathlib import Path

from cdino.train.batchnorm import target_batchnorm


def align_to_domain(model_dir: str | Path, cfg, data_dir: str | Path, out: str | Path,
                    batchnorm: bool = True) -> Path:
    """The model folder ``model_dir`` aligned to the recordings of ``data_dir`` (module
    docstring): target BatchNorm statistics (when ``batchnorm``), then exported on the
    target store — its mean, label-free threshold and calibration. ``cfg``: the training
    config (data store, threads, device, fbank). Call on every rank; rank 0 writes."""
    from cdino.console import progress_enabled
    from cdino.data.kaldi_dir import DataDir
    from cdino.data.stores import open_store
    from cdino.distributed import init_distributed, is_main, resolve_device
    from cdino.eval.calibration import CALIBRATION_FILE, read_calibration, write_calibration
    from cdino.eval.model_folder import read_model_folder
    from cdino.train.stages import export_model

    device = resolve_device(cfg.trainer.device)
    init_distributed(device)
    model = read_model_folder(model_dir, device=str(device), optimize=False)
    store = open_store(DataDir.load(data_dir), cfg.data, progress=progress_enabled(cfg.trainer.progress) and is_main())
    encoder = model.encoder
    info = {"method": "aligned", "source_model": str(model_dir), "target": str(data_dir)}
    if batchnorm:
        info["batchnorm_layers"] = target_batchnorm(encoder, model.fbank, store, device, seed=cfg.trainer.seed)
    out = export_model(encoder, cfg, store, device, Path(out), info,
                       progress=progress_enabled(cfg.trainer.progress), embed_all=True)
    if is_main():  # the calibration belongs to the target, not to the model's training data
        cal = read_calibration(out / CALIBRATION_FILE)
        if cal is not None:
            cal.domain = str(data_dir)
            write_calibration(out / CALIBRATION_FILE, cal)
    return out
