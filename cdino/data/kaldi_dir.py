"""Kaldi-style data folders and verification trial lists.

A data folder holds ``wav.scp`` (``utt path``; a relative path is relative to the folder)
and optionally ``utt2spk`` (``utt speaker``), ``spk2utt`` (``speaker utt utt ...``),
``utt2dur`` (``utt seconds``) and a second modality as ``visual.npy`` + ``visual_utts.txt``.
A trials file lists ``enroll test target|nontarget`` (the official VoxCeleb form
``1|0 enroll test`` is read too). Every reader fails with a :class:`DataError` naming the
file and line.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cdino.atomic import save_npy, write_lines
from cdino.data.shard_index import LIST_NAME as SHARD_LIST, ShardMembers, load_shard_index
from cdino.data.text_lines import read_text_lines
from cdino.errors import DataError

#: Audio suffixes that :func:`utt_id_from_path` strips.
AUDIO_SUFFIXES = (".wav", ".flac", ".m4a")

_TARGET_WORDS = {"target": 1, "nontarget": 0}
_OFFICIAL_LABELS = {"1": 1, "0": 0}

PathLike = str | os.PathLike

def utt_id_from_path(rel: str) -> str:
    """Utterance id of a corpus-relative audio path: the path without its audio suffix.

    ``id10270/x6uYqmx31kE/00001.wav`` → ``id10270/x6uYqmx31kE/00001``.
    """
    lower = rel.lower()
    for suffix in AUDIO_SUFFIXES:
        if lower.endswith(suffix):
            return rel[: -len(suffix)]
    return rel


def _read_pairs(path: Path, what: str, key_name: str = "utterance id"
                ) -> list[tuple[int, str, str]]:
    """``(line number, key, rest of line)`` for every non-blank ``key value`` line."""
    out = []
    for lineno, line in enumerate(read_text_lines(path, what), 1):
        parts = line.split(maxsplit=1)
        if not parts:
            continue
        if len(parts) == 1:
            raise DataError(f"{path}:{lineno}: {key_name} '{parts[0]}' has no value "
                            f"(a {what} line is 'key value')")
        out.append((lineno, parts[0], parts[1].strip()))
    return out


def _to_dict(rows: list[tuple[int, str, str]], path: Path, key_name: str
             ) -> tuple[dict[str, str], dict[str, int]]:
    """Rows as an ordered mapping plus the line of each key; duplicates → DataError."""
    mapping: dict[str, str] = {}
    lines: dict[str, int] = {}
    for lineno, key, value in rows:
        if key in mapping:
            raise DataError(f"{path}:{lineno}: duplicate {key_name} '{key}' "
                            f"(first on line {lines[key]})")
        mapping[key] = value
        lines[key] = lineno
    return mapping, lines


def read_scp(path: PathLike, *, what: str = "wav.scp") -> dict[str, str]:
    """Read a ``key rest-of-line`` file (wav.scp, utt2spk, ...) into an ordered dict."""
    path = Path(path)
    mapping, _ = _to_dict(_read_pairs(path, what, key_name="key"), path, "key")
    return mapping


def _check_token(path: Path, token: str, what: str) -> str:
    if not token or any(c.isspace() for c in token):
        raise DataError(f"{path}: {what} {token!r} is empty or contains whitespace")
    return token


def write_scp(path: PathLike, mapping: Mapping[str, object]) -> None:
    """Write ``key value`` lines in the mapping's order, atomically."""
    path = Path(path)

    def lines():
        for key, value in mapping.items():
            text = str(value)
            if "\n" in text or "\r" in text or not text.strip():
                raise DataError(f"{path}: value of '{key}' is empty or spans lines")
            yield f"{_check_token(path, key, 'key')} {text}"

    write_lines(path, lines())


def _spk2utt_of(utts: Iterable[str], utt2spk: Mapping[str, str]) -> dict[str, list[str]]:
    spk2utt: dict[str, list[str]] = {}
    for utt in utts:
        spk2utt.setdefault(utt2spk[utt], []).append(utt)
    return spk2utt


@dataclass
class DataDir:
    """A data folder: its utterances, their audio paths and (optional) speakers."""

    root: Path
    utts: list[str]
    wav: dict[str, str]
    utt2spk: dict[str, str] | None = None
    utt2dur: dict[str, float] | None = None  # seconds; may cover only some utterances
    shards: object | None = field(default=None, repr=False, compare=False)  # ShardIndex of a shard folder

    @classmethod
    def load(cls, path: PathLike) -> DataDir:
        """Read and cross-check ``wav.scp``, ``utt2spk``, ``spk2utt`` and ``utt2dur``.

        A folder of tar shards (``shards.list``, written by ``cdino prepare shards``), or
        that list itself, loads too: utterances and speakers come from its index
        (:func:`load_shard_dir`, through :mod:`cdino.data.shard_index`) and ``shards`` holds that index.
        """
        given = Path(path)
        if given.name == SHARD_LIST and given.is_file():
            given = given.parent
        if (given.is_dir() and (given / SHARD_LIST).is_file()
                and not (given / "wav.scp").exists()):
            return load_shard_dir(given)
        if not given.is_dir():
            what = "is not a folder" if given.exists() else "data folder not found"
            raise DataError(f"{given}: {what}")
        root = given.resolve()
        if (root / "segments").exists():
            raise DataError(f"{given / 'segments'}: segments files are not supported; "
                            "cut the segments into audio files first")
        scp = given / "wav.scp"
        rows = _read_pairs(scp, "wav.scp")
        if not rows:
            raise DataError(f"{scp}: empty (no utterances)")
        raw, _ = _to_dict(rows, scp, "utterance id")
        wav: dict[str, str] = {}
        root_s, isabs, join, norm = str(root), os.path.isabs, os.path.join, os.path.normpath
        for lineno, utt, value in rows:  # string operations only: a million lines load in seconds
            if value[-1] == "|":
                raise DataError(f"{scp}:{lineno}: piped commands are not supported; "
                                "give an audio file path")
            wav[utt] = value if isabs(value) else norm(join(root_s, value))
        del rows
        utts = list(raw)
        utt2spk = _load_utt2spk(given, wav)
        utt2spk = _check_spk2utt(given, utts, utt2spk)
        return cls(root=root, utts=utts, wav=wav, utt2spk=utt2spk,
                   utt2dur=_load_utt2dur(given, wav))

    def __len__(self) -> int:
        return len(self.utts)

    def durations(self) -> dict[str, float] | None:
        """Known utterance durations in seconds (``utt2dur``; possibly for some only)."""
        return self.utt2dur

    @property
    def spk2utt(self) -> dict[str, list[str]] | None:
        """Speaker → its utterances (in folder order); ``None`` without ``utt2spk``."""
        if self.utt2spk is None:
            return None
        return _spk2utt_of(self.utts, self.utt2spk)

    def speaker_labels(self, utts: Iterable[str] | None = None) -> tuple[np.ndarray, list[str]]:
        """Integer speaker label of each utterance and the speakers (sorted) they index."""
        if self.utt2spk is None:
            raise DataError(f"{self.root}: no utt2spk (speaker labels) in this data folder")
        utts = self.utts if utts is None else list(utts)
        try:
            spks = [self.utt2spk[u] for u in utts]
        except KeyError as exc:
            raise DataError(f"{self.root}: utterance '{exc.args[0]}' is not in this "
                            "data folder") from None
        speakers = sorted(set(spks))
        index = {s: i for i, s in enumerate(speakers)}
        return np.array([index[s] for s in spks], dtype=np.int64), speakers

    def subset(self, utts: Iterable[str]) -> DataDir:
        """The same folder restricted to ``utts`` (in the given order)."""
        utts = list(utts)
        missing = next((u for u in utts if u not in self.wav), None)
        if missing is not None:
            raise DataError(f"{self.root}: utterance '{missing}' is not in this data folder")
        durs = self.utt2dur
        return DataDir(
            root=self.root, utts=utts, wav={u: self.wav[u] for u in utts},
            utt2spk=None if self.utt2spk is None else {u: self.utt2spk[u] for u in utts},
            utt2dur=None if durs is None else {u: durs[u] for u in utts if u in durs},
            shards=self.shards)


def _load_utt2spk(root: Path, wav: dict[str, str]) -> dict[str, str] | None:
    path = root / "utt2spk"
    if not path.exists():
        return None
    rows = _read_pairs(path, "utt2spk")
    utt2spk, _ = _to_dict(rows, path, "utterance id")
    for lineno, utt, spk in rows:
        if utt not in wav:
            raise DataError(f"{path}:{lineno}: utterance '{utt}' is not in wav.scp")
        if len(spk.split()) != 1:
            raise DataError(f"{path}:{lineno}: expected 'utt speaker', got {len(spk.split()) + 1} "
                            "fields")
    missing = next((u for u in wav if u not in utt2spk), None)
    if missing is not None:
        raise DataError(f"{path}: no speaker for utterance '{missing}' of wav.scp")
    return {u: utt2spk[u] for u in wav}


def _check_spk2utt(root: Path, utts: list[str], utt2spk: dict[str, str] | None
                   ) -> dict[str, str] | None:
    """Check ``spk2utt`` against ``utt2spk`` (or build ``utt2spk`` from it when absent)."""
    path = root / "spk2utt"
    if not path.exists():
        return utt2spk
    known = set(utts)
    derived: dict[str, str] = {}
    seen_line: dict[str, int] = {}
    for lineno, spk, rest in _read_pairs(path, "spk2utt", key_name="speaker"):
        for utt in rest.split():
            if utt not in known:
                raise DataError(f"{path}:{lineno}: utterance '{utt}' is not in wav.scp")
            if utt in derived:
                raise DataError(f"{path}:{lineno}: utterance '{utt}' is listed twice "
                                f"(also on line {seen_line[utt]})")
            if utt2spk is not None and utt2spk[utt] != spk:
                raise DataError(f"{path}:{lineno}: utterance '{utt}' is under speaker '{spk}' "
                                f"but utt2spk says '{utt2spk[utt]}'")
            derived[utt] = spk
            seen_line[utt] = lineno
    missing = next((u for u in utts if u not in derived), None)
    if missing is not None:
        raise DataError(f"{path}: utterance '{missing}' of wav.scp is not listed")
    return utt2spk if utt2spk is not None else {u: derived[u] for u in utts}


def read_utt2dur(path: PathLike, known: Mapping[str, object] | set[str]) -> dict[str, float]:
    """``utt seconds`` lines; an utterance not in ``known``, a duplicate or a value that is
    not a non-negative number → ``DataError`` naming file and line. Utterances of ``known``
    may be missing (their length is then read from the audio file)."""
    path = Path(path)
    durs: dict[str, float] = {}
    isfinite = math.isfinite
    for lineno, line in enumerate(read_text_lines(path, "utt2dur"), 1):
        parts = line.split()
        if not parts:
            continue
        utt = parts[0]
        if len(parts) != 2:
            what = "no value" if len(parts) == 1 else f"{len(parts)} fields"
            raise DataError(f"{path}:{lineno}: expected 'utt seconds', got {what}")
        if utt not in known:
            raise DataError(f"{path}:{lineno}: utterance '{utt}' is not in wav.scp")
        if utt in durs:
            first = next(i for i, l in enumerate(read_text_lines(path, "utt2dur"), 1)
                         if l.split()[:1] == [utt])
            raise DataError(f"{path}:{lineno}: duplicate utterance id '{utt}' (first on line {first})")
        try:
            dur = float(parts[1])
        except ValueError:
            dur = -1.0
        if not (isfinite(dur) and dur >= 0):
            raise DataError(f"{path}:{lineno}: duration '{parts[1]}' is not a number of seconds")
        durs[utt] = dur
    return durs


def format_seconds(seconds: float) -> str:
    """A duration as written to ``utt2dur``: microseconds, trailing zeros dropped (exact for
    any whole number of samples at 16 kHz: ``round(seconds * 16000)`` gives them back)."""
    text = f"{float(seconds):.6f}".rstrip("0")
    return text[:-1] if text.endswith(".") else text


def write_utt2dur(path: PathLike, durations: Mapping[str, float]) -> None:
    """Write ``utt seconds`` lines (in the mapping's order), atomically."""
    path = Path(path)
    write_lines(path, (f"{_check_token(path, u, 'utterance id')} {format_seconds(d)}"
                       for u, d in durations.items()))


def _load_utt2dur(root: Path, wav: dict[str, str]) -> dict[str, float] | None:
    path = root / "utt2dur"
    if not path.exists():
        return None
    durs = read_utt2dur(path, wav)
    if len(durs) == len(wav):
        return {u: durs[u] for u in wav}
    return {u: durs[u] for u in wav if u in durs}


def write_data_dir(path: PathLike, wav: Mapping[str, object],
                   utt2spk: Mapping[str, str] | None = None, *,
                   utt2dur: Mapping[str, float] | None = None) -> Path:
    """Write a data folder: ``wav.scp``; with speakers ``utt2spk`` + ``spk2utt``; with
    durations (seconds; unreadable files may be left out) ``utt2dur``."""
    path = Path(path)
    if not wav:
        raise DataError(f"{path}: refusing to write a data folder without utterances")
    for name, other in (("utt2spk", utt2spk), ("utt2dur", utt2dur)):
        if other is not None:  # durations may be missing (unreadable files), speakers not
            missing = next((u for u in wav if u not in other), None) if name == "utt2spk" else None
            extra = next((u for u in other if u not in wav), None)
            if missing is not None or extra is not None:
                bad = missing if missing is not None else extra
                raise DataError(f"{path / name}: utterance '{bad}' is in only one of "
                                f"wav.scp and {name}")
    path.mkdir(parents=True, exist_ok=True)
    for stale in ("utt2spk", "spk2utt", "utt2dur"):
        if (path / stale).exists():
            (path / stale).unlink()
    write_scp(path / "wav.scp", wav)
    if utt2spk is not None:
        ordered = {u: utt2spk[u] for u in wav}
        write_scp(path / "utt2spk", ordered)
        spk2utt = _spk2utt_of(wav, ordered)
        write_scp(path / "spk2utt", {s: " ".join(us) for s, us in spk2utt.items()})
    if utt2dur is not None:
        write_utt2dur(path / "utt2dur", {u: utt2dur[u] for u in wav if u in utt2dur})
    return path


@dataclass
class Trials:
    """A verification trial list: pairs (enroll, test) with label 1 (target) or 0."""

    enroll: list[str]
    test: list[str]
    labels: np.ndarray
    path: Path | None = None
    lines: np.ndarray | None = None  # 1-based line of each trial in ``path``

    def __len__(self) -> int:
        return len(self.enroll)

    @property
    def utts(self) -> list[str]:
        """Every utterance the trials use, each once, in order of first use."""
        return list(dict.fromkeys(u for pair in zip(self.enroll, self.test) for u in pair))

    def _where(self, i: int) -> str:
        if self.path is None:
            return f"trial {i + 1}"
        line = int(self.lines[i]) if self.lines is not None else i + 1
        return f"{self.path}:{line}"

    def check_utts(self, known: set[str] | Mapping[str, object], data_path: PathLike) -> None:
        """Raise ``DataError`` naming the first trial utterance that is not in ``known``."""
        for i, (e, t) in enumerate(zip(self.enroll, self.test)):
            for utt in (e, t):
                if utt not in known:
                    raise DataError(f"{self._where(i)}: utterance '{utt}' is not in {data_path}")


def _parse_trial(fields: list[str]) -> tuple[str, str, int] | None:
    """One trial from its fields in either form; ``None`` when it is in neither."""
    if len(fields) != 3:
        return None
    a, b, c = fields
    if c in _TARGET_WORDS:
        return a, b, _TARGET_WORDS[c]
    if a in _OFFICIAL_LABELS:
        return b, c, _OFFICIAL_LABELS[a]
    return None


def read_trials(path: PathLike) -> Trials:
    """Read a trials file; each line is ``enroll test target|nontarget`` or ``1|0 enroll test``.

    Names with an audio suffix (the official VoxCeleb lists) become utterance ids by
    :func:`utt_id_from_path`.
    """
    path = Path(path)
    enroll, test, labels, lines = [], [], [], []
    for lineno, line in enumerate(read_text_lines(path, "trials"), 1):
        fields = line.split()
        if not fields:
            continue
        trial = _parse_trial(fields)
        if trial is None:
            shown = line.strip() if len(line) <= 120 else line.strip()[:117] + "..."
            raise DataError(f"{path}:{lineno}: expected 'enroll test target|nontarget' or "
                            f"'1|0 enroll test', got '{shown}'")
        enroll.append(utt_id_from_path(trial[0]))
        test.append(utt_id_from_path(trial[1]))
        labels.append(trial[2])
        lines.append(lineno)
    if not enroll:
        raise DataError(f"{path}: no trials")
    return Trials(enroll, test, np.array(labels, dtype=np.int8), path,
                  np.array(lines, dtype=np.int64))


def write_trials(path: PathLike, trials: Trials) -> None:
    """Write trials as ``enroll test target|nontarget`` lines, atomically."""
    path = Path(path)
    if not (len(trials.enroll) == len(trials.test) == len(trials.labels)):
        raise ValueError("enroll, test and labels must have the same length")
    words = ("nontarget", "target")
    write_lines(path, (f"{e} {t} {words[int(y)]}"
                               for e, t, y in zip(trials.enroll, trials.test, trials.labels)))


@dataclass
class EnrollMap:
    """Enrolments of several utterances each: ``enroll_id utt1 utt2 ...`` lines, the way
    speaker-recognition evaluations ship them; trials then name ``enroll_id test_utt``."""

    utts: dict[str, list[str]]  # enrolment id -> its utterance ids, in file order
    lines: dict[str, int]  # enrolment id -> its 1-based line in ``path``
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.utts)

    def _where(self, enroll_id: str) -> str:
        return f"{self.path}:{self.lines[enroll_id]}" if self.path is not None else f"enrolment '{enroll_id}'"

    def check_utts(self, known: set[str] | Mapping[str, object], data_path: PathLike,
                   used: Iterable[str] | None = None) -> None:
        """``DataError`` naming the map's line of the first utterance (of the enrolments in
        ``used``, or all) that is not in ``known``."""
        for e in (self.utts if used is None else dict.fromkeys(used)):
            for utt in self.utts[e]:
                if utt not in known:
                    raise DataError(f"{self._where(e)}: utterance '{utt}' (enrolment '{e}') "
                                    f"is not in {data_path}")

    def check_trials(self, trials: Trials, known: set[str] | Mapping[str, object],
                     data_path: PathLike) -> None:
        """Every trial's enrolment is in this map and its test utterance in ``known``;
        else ``DataError`` naming the trials file and line."""
        for i, (e, t) in enumerate(zip(trials.enroll, trials.test)):
            if e not in self.utts:
                raise DataError(f"{trials._where(i)}: enrolment '{e}' is not in {self.path}")
            if t not in known:
                raise DataError(f"{trials._where(i)}: utterance '{t}' is not in {data_path}")


def read_enroll_map(path: PathLike) -> EnrollMap:
    """Read an enrolment map: ``enroll_id utt1 [utt2 ...]`` per line (blank lines skipped;
    names with an audio suffix become utterance ids, as in trials). A line without an
    utterance, or an enrolment id listed twice, is a ``DataError`` naming the file and line."""
    path = Path(path)
    emap = EnrollMap({}, {}, path)
    for lineno, line in enumerate(read_text_lines(path, "enroll map"), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 2:
            raise DataError(f"{path}:{lineno}: expected 'enroll_id utt1 utt2 ...' (an enrolment "
                            f"id and at least one utterance), got '{line.strip()[:120]}'")
        e = utt_id_from_path(fields[0])
        if e in emap.utts:
            raise DataError(f"{path}:{lineno}: enrolment '{e}' listed twice (first on line "
                            f"{emap.lines[e]})")
        emap.utts[e] = [utt_id_from_path(u) for u in fields[1:]]
        emap.lines[e] = lineno
    if not emap.utts:
        raise DataError(f"{path}: no enrolments")
    return emap


def write_visual(data_dir: PathLike, utts: Sequence[str], emb: np.ndarray) -> None:
    """Write a data folder's visual embeddings (``visual.npy`` + ``visual_utts.txt``, the
    form :func:`read_visual` reads), each file through a temporary file."""
    root = Path(data_dir)
    root.mkdir(parents=True, exist_ok=True)
    save_npy(root / "visual.npy", emb)
    write_lines(root / "visual_utts.txt", utts)


def read_visual(data_dir: PathLike, *, known: set[str] | Mapping[str, object] | None = None
                ) -> tuple[list[str], np.ndarray] | None:
    """The visual embeddings of a data folder (``visual.npy`` + ``visual_utts.txt``).

    Returns ``(utts, emb)`` with ``emb`` float32 ``(len(utts), d)``, or ``None`` when the
    folder has no visual modality. With ``known``, every listed utterance must be in it.
    """
    root = Path(data_dir)
    npy, ids = root / "visual.npy", root / "visual_utts.txt"
    if not npy.exists() and not ids.exists():
        return None
    if not ids.exists():
        raise DataError(f"{ids}: not found (visual.npy needs its list of utterance ids)")
    if not npy.exists():
        raise DataError(f"{npy}: not found (visual_utts.txt needs its embeddings)")
    lines = read_text_lines(ids, "visual_utts.txt")
    while lines and not lines[-1].strip():
        lines.pop()
    utts: list[str] = []
    first_line: dict[str, int] = {}
    for lineno, line in enumerate(lines, 1):
        fields = line.split()
        if len(fields) != 1:
            raise DataError(f"{ids}:{lineno}: expected one utterance id, got {len(fields)} fields")
        utt = fields[0]
        if utt in first_line:
            raise DataError(f"{ids}:{lineno}: duplicate utterance id '{utt}' "
                            f"(first on line {first_line[utt]})")
        if known is not None and utt not in known:
            raise DataError(f"{ids}:{lineno}: utterance '{utt}' is not in the data folder")
        first_line[utt] = lineno
        utts.append(utt)
    try:
        emb = np.load(npy, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"{npy}: not a readable .npy array ({exc})") from None
    if emb.ndim != 2 or not np.issubdtype(emb.dtype, np.number):
        raise DataError(f"{npy}: expected a 2-D numeric array, got shape {emb.shape} "
                        f"of {emb.dtype}")
    if emb.shape[0] != len(utts):
        raise DataError(f"{npy}: {emb.shape[0]} rows but {ids.name} lists {len(utts)} utterances")
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    bad = np.flatnonzero(~np.isfinite(emb).all(axis=1))
    if bad.size:
        row = int(bad[0])
        raise DataError(f"{npy}: row {row} (utterance '{utts[row]}') has NaN or infinite values")
    return utts, emb


def load_shard_dir(folder: PathLike) -> DataDir:
    """A shard folder as a :class:`DataDir`: utterances and speakers from its index,
    ``wav`` naming ``<shard>:<utterance>``, ``shards`` the :class:`ShardIndex`."""
    folder = Path(folder)
    index = load_shard_index(folder / SHARD_LIST)
    utt2spk = dict(zip(index.utts, index.spks)) if all(index.spks) else None
    return DataDir(root=folder.resolve(), utts=index.utts, wav=ShardMembers(index),
                   utt2spk=utt2spk, shards=index)
