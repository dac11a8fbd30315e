"""Data folders for public corpora: VoxCeleb 1 and 2, MUSAN noises, RIRS_NOISES rooms.

Each function scans a corpus as distributed (VoxCeleb2's m4a included), writes
Kaldi-style data folders with absolute paths (see docs/data.md) and returns a summary.
Nothing is decoded here: VoxCeleb folders get an ``utt2dur`` from the file headers (read
in parallel) so training starts without reading them again; files whose header cannot
be read are left out of ``utt2dur`` (counted) and skipped later by the loaders.
"""

from __future__ import annotations

import os
import re
from pathlib import Path


from cdino.console import progress_bar
from cdino.data.audio import SAMPLE_RATE, probe_lengths
from cdino.data.kaldi_dir import read_trials, utt_id_from_path, write_data_dir, write_scp, \
    write_trials
from cdino.errors import DataError

PathLike = str | os.PathLike

#: The official cleaned VoxCeleb1 trial lists, by test-set name.
VOXCELEB1_TRIALS = {"O": "veri_test2.txt", "E": "list_test_all2.txt", "H": "list_test_hard2.txt"}
#: VoxCeleb1's test speakers (the -O list): id10270 ... id10309.
VOXCELEB1_TEST_SPEAKERS = range(10270, 10310)

_SPEAKER = re.compile(r"^id\d+$")
_MUSAN_CATEGORIES = ("noise", "speech", "music")
_ROOMS = ("smallroom", "mediumroom", "largeroom")


def _scan(root: Path, suffixes: tuple[str, ...], desc: str, progress: bool) -> list[Path]:
    """Every file under ``root`` whose suffix is in ``suffixes`` (sorted)."""
    found = []
    with progress_bar(desc=desc, unit=" files", show=progress) as bar:
        for folder, dirs, files in os.walk(root, followlinks=True):
            dirs.sort()
            for name in files:
                if os.path.splitext(name)[1].lower() in suffixes:
                    found.append(Path(folder) / name)
                    bar.update(1)
    found.sort()
    return found


def _require_dir(path: PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path}: {what} folder not found")
    return path


def _voxceleb_utts(root: Path, files: list[Path]) -> tuple[dict[str, str], int]:
    """``utt → absolute path`` from ``.../idXXXXX/<video>/<n>.<ext>`` files; also the count
    of files that do not sit in that layout. Two files for one utterance → DataError."""
    wav: dict[str, str] = {}
    ignored = 0
    for path in files:
        rel = path.relative_to(root).parts
        if len(rel) < 3 or not _SPEAKER.match(rel[-3]):
            ignored += 1
            continue
        utt = utt_id_from_path("/".join(rel[-3:]))
        if utt in wav:
            raise DataError(f"{path}: utterance '{utt}' found twice (also {wav[utt]})")
        wav[utt] = os.path.abspath(path)
    return wav, ignored


def _speaker(utt: str) -> str:
    return utt.split("/", 1)[0]


def _folder_summary(path: Path, wav: dict[str, str]) -> dict:
    return {"dir": str(path), "utts": len(wav), "speakers": len({_speaker(u) for u in wav})}


def _durations(wav: dict[str, str], progress: bool, what: str) -> dict[str, float]:
    """Seconds of every utterance whose audio header can be read (thread pool)."""
    lengths = probe_lengths(list(wav.values()), progress=progress,
                            desc=f"reading {what} audio headers")
    return {u: n / SAMPLE_RATE for u, n in zip(wav, lengths) if isinstance(n, int)}


def _write_voxceleb_folder(path: Path, wav: dict[str, str], durs: dict[str, float]) -> dict:
    write_data_dir(path, wav, {u: _speaker(u) for u in wav}, utt2dur=durs)
    summary = _folder_summary(path, wav)
    summary["unreadable_headers"] = sum(1 for u in wav if u not in durs)
    return summary


def _is_vox1_test_speaker(spk: str) -> bool:
    return int(spk[2:]) in VOXCELEB1_TEST_SPEAKERS


def _scan_vox2(vox2: Path, progress: bool) -> tuple[dict[str, str], int]:
    root = vox2 / "dev" if (vox2 / "dev").is_dir() else vox2
    files = _scan(root, (".wav", ".flac", ".m4a"), "scanning VoxCeleb2 dev", progress)
    audio = [p for p in files if p.suffix.lower() != ".m4a"]
    m4a = [p for p in files if p.suffix.lower() == ".m4a"]
    wav, ignored = _voxceleb_utts(root, audio)
    # The m4a files as shipped are read directly (FFmpeg, cdino.data.audio); an utterance
    # also present as .wav/.flac (converted) uses that copy.
    m4a_utts, m4a_ignored = _voxceleb_utts(root, m4a)
    only_m4a = {u: p for u, p in m4a_utts.items() if u not in wav}
    if only_m4a:
        wav = dict(sorted({**wav, **only_m4a}.items()))
    if not wav:
        raise DataError(f"{root}: no VoxCeleb2 audio found (expected "
                        f"{root}/aac|wav|flac/idXXXXX/<video>/00001.<ext>)")
    return wav, ignored + m4a_ignored


def _find_trial_lists(dirs: list[Path]) -> dict[str, Path]:
    found = {}
    for name, filename in VOXCELEB1_TRIALS.items():
        for d in dirs:
            if (d / filename).is_file():
                found[name] = d / filename
                break
    return found


def prepare_voxceleb(vox1: PathLike | None, vox2: PathLike | None, out: PathLike,
                     trials_dir: PathLike | None = None, *, progress: bool = True) -> dict:
    """Data folders for VoxCeleb: ``out/vox2_dev`` (training), ``out/vox1`` (all of
    VoxCeleb1, with ``trials_O|E|H`` from the official cleaned lists) and ``out/vox1_dev``
    (VoxCeleb1 without its test speakers). Returns a summary of what was written.
    """
    if vox1 is None and vox2 is None:
        raise DataError("prepare voxceleb: give a VoxCeleb1 folder, a VoxCeleb2 folder or both")
    if trials_dir is not None and vox1 is None:
        raise DataError(f"{trials_dir}: trial lists need the VoxCeleb1 folder too")
    out = Path(out)
    summary: dict = {"out": str(out)}
    if vox2 is not None:
        vox2 = _require_dir(vox2, "VoxCeleb2")
        wav, ignored = _scan_vox2(vox2, progress)
        summary["vox2_dev"] = _write_voxceleb_folder(out / "vox2_dev", wav,
                                                     _durations(wav, progress, "VoxCeleb2"))
        summary["vox2_dev"]["ignored_files"] = ignored
    if vox1 is not None:
        vox1 = _require_dir(vox1, "VoxCeleb1")
        files = _scan(vox1, (".wav", ".flac"), "scanning VoxCeleb1", progress)
        wav, ignored = _voxceleb_utts(vox1, files)
        if not wav:
            raise DataError(f"{vox1}: no VoxCeleb1 audio found (expected "
                            f"{vox1}/wav/idXXXXX/<video>/00001.wav)")
        durs = _durations(wav, progress, "VoxCeleb1")
        summary["vox1"] = _write_voxceleb_folder(out / "vox1", wav, durs)
        summary["vox1"]["ignored_files"] = ignored
        dev = {u: p for u, p in wav.items() if not _is_vox1_test_speaker(_speaker(u))}
        if dev:
            summary["vox1_dev"] = _write_voxceleb_folder(
                out / "vox1_dev", dev, {u: durs[u] for u in dev if u in durs})
        summary["trials"] = _prepare_vox1_trials(vox1, trials_dir, out / "vox1", wav)
    return summary


def _prepare_vox1_trials(vox1: Path, trials_dir: PathLike | None, data: Path,
                         wav: dict[str, str]) -> dict:
    dirs = [vox1]
    if trials_dir is not None:
        dirs.insert(0, _require_dir(trials_dir, "trial lists"))
        if not _find_trial_lists(dirs[:1]):
            names = ", ".join(VOXCELEB1_TRIALS.values())
            raise DataError(f"{trials_dir}: none of the VoxCeleb1 trial lists ({names}) found")
    lists = _find_trial_lists(dirs)
    result = {}
    for name in VOXCELEB1_TRIALS:
        target = data / f"trials_{name}"
        if name not in lists:
            if target.exists():
                target.unlink()  # stale list of an earlier run
            continue
        trials = read_trials(lists[name])
        trials.check_utts(wav, data)
        write_trials(target, trials)
        result[name] = {"path": str(target), "source": str(lists[name]),
                        "n_trials": len(trials), "n_target": int(trials.labels.sum())}
    return result


def prepare_musan(musan: PathLike, out: PathLike, *, progress: bool = True) -> dict:
    """``out/wav.scp`` + ``out/utt2category`` (noise|speech|music) for the MUSAN corpus."""
    musan = _require_dir(musan, "MUSAN")
    present = [c for c in _MUSAN_CATEGORIES if (musan / c).is_dir()]
    if not present:
        raise DataError(f"{musan}: no noise/, speech/ or music/ folder (is this MUSAN?)")
    wav: dict[str, str] = {}
    category: dict[str, str] = {}
    for cat in present:
        for path in _scan(musan / cat, (".wav", ".flac"), f"scanning MUSAN {cat}", progress):
            utt = utt_id_from_path(path.relative_to(musan).as_posix())
            wav[utt] = os.path.abspath(path)
            category[utt] = cat
    if not wav:
        raise DataError(f"{musan}: no .wav files under {', '.join(present)}")
    out = Path(out)
    write_data_dir(out, wav)
    write_scp(out / "utt2category", category)
    counts = {c: sum(1 for v in category.values() if v == c) for c in _MUSAN_CATEGORIES}
    return {"dir": str(out), "utts": len(wav), "categories": counts}


def prepare_rirs(rirs: PathLike, out: PathLike, *, simulated: bool = True, real: bool = False,
                 progress: bool = True) -> dict:
    """``out/wav.scp`` (+ ``utt2category``: room size or ``real``) for RIRS_NOISES.

    Simulated small/medium/large rooms by default; ``real=True`` adds the measured room
    responses of ``real_rirs_isotropic_noises`` (its isotropic noise files are left out).
    """
    rirs = _require_dir(rirs, "RIRS_NOISES")
    wav: dict[str, str] = {}
    category: dict[str, str] = {}
    if simulated:
        sim = rirs / "simulated_rirs"
        rooms = [r for r in _ROOMS if (sim / r).is_dir()]
        if not rooms:
            raise DataError(f"{sim}: no smallroom/, mediumroom/ or largeroom/ folder "
                            "(is this RIRS_NOISES?)")
        for room in rooms:
            for path in _scan(sim / room, (".wav",), f"scanning {room}", progress):
                utt = utt_id_from_path(path.relative_to(rirs).as_posix())
                wav[utt], category[utt] = os.path.abspath(path), room
    if real:
        real_dir = _require_dir(rirs / "real_rirs_isotropic_noises", "real RIRs")
        for path in sorted(real_dir.glob("*.wav")):
            if "noise" in path.name.lower():
                continue
            utt = utt_id_from_path(path.relative_to(rirs).as_posix())
            wav[utt], category[utt] = os.path.abspath(path), "real"
    if not wav:
        raise DataError(f"{rirs}: no room impulse responses found")
    out = Path(out)
    write_data_dir(out, wav)
    write_scp(out / "utt2category", category)
    counts: dict[str, int] = {}
    for c in category.values():
        counts[c] = counts.get(c, 0) + 1
    return {"dir": str(out), "utts": len(wav), "categories": counts}
