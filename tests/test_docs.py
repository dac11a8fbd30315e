"""The commands the documentation shows are commands cdino accepts, and the recipe files
they name exist and load."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from cdino.cli import build_parser
from cdino.pipeline.method import load_recipe, stage_train_config

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "recipes" / "voxceleb" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _shell_blocks(text: str) -> list[str]:
    return re.findall(r"^```(?:bash|sh|shell)\n(.*?)^```", text, flags=re.S | re.M)


def documented_commands() -> list[tuple[str, list[str]]]:
    """(where, argv after `cdino`) of every cdino command in the docs' shell blocks."""
    found = []
    for doc in DOCS:
        for block in _shell_blocks(doc.read_text()):
            variables: dict[str, str] = {}
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split(" # ")[0].strip()
                m = re.fullmatch(r"([A-Z_]+)=(\S+)", line)
                if m:
                    variables[m.group(1)] = m.group(2)
                    continue
                lex = shlex.shlex(line, posix=True, punctuation_chars=True)
                lex.whitespace_split = True
                try:
                    tokens = list(lex)
                except ValueError:  # a quote spanning lines: a shell script, not a cdino command
                    continue
                parts, current = [], []
                for tok in tokens:
                    if tok in ("&&", "||", ";", "|", "&"):
                        parts.append(current)
                        current = []
                    else:
                        current.append(variables.get(tok[1:], tok) if tok.startswith("$") else tok)
                parts.append(current)
                for words in parts:
                    for i, w in enumerate(words):
                        if (w == "cdino.cli" and i > 0 and words[i - 1] == "-m") or (w == "cdino" and i == 0):
                            found.append((f"{doc.name}: {' '.join(words)}", words[i + 1:]))
                            break
    return found


COMMANDS = documented_commands()


def test_the_docs_show_the_distributed_and_stage_commands():
    verbs = {argv[0] for _, argv in COMMANDS if argv}
    assert {"demo", "run", "train", "eval", "embed", "prepare"} <= verbs
    assert any("--recipe" in argv and "--stage" in argv for _, argv in COMMANDS)


@pytest.mark.parametrize("where,argv", COMMANDS, ids=[w[:80] for w, _ in COMMANDS])
def test_documented_command_parses(where, argv):
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(f"{where}: cdino rejects this command") from exc
    for name in ("config", "recipe"):
        path = getattr(args, name, None)
        if path and path.startswith("recipes/"):
            assert (ROOT / path).is_file(), f"{where}: {path} does not exist"
    if getattr(args, "recipe", None) and getattr(args, "stage", None):
        cfg, method = stage_train_config(ROOT / args.recipe, args.stage)
        assert method in ("dino", "cdino", "pseudo", "supervised")
    if argv[0] == "run" and argv[1].startswith("recipes/"):
        load_recipe(ROOT / argv[1])
