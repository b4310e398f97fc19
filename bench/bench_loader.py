"""How long loading and checking playbooks takes, beside parsing the same YAML plainly.

Method: the shipped example folder is loaded (read, parsed with positions, validated,
checked: templates, caps, overlaps) ROUNDS times; the baseline, measured in the same
run, parses the same files ROUNDS times with PyYAML's `CSafeLoader` and does nothing
else. Each side runs REPEATS times, interleaved, and the best time of each is kept,
so that noise from other work on the machine inflates neither. The ratio says what
the line and column tracking and every check cost over bare parsing.

Run: `uv run python bench/bench_loader.py`
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import yaml

from orchestrator.loader import discover, load

ROUNDS = 50
REPEATS = 5
FOLDER = Path(__file__).resolve().parents[1] / "playbooks"


def _time(work: Callable[[], None], rounds: int) -> float:
    start = time.perf_counter()
    for _ in range(rounds):
        work()
    return time.perf_counter() - start


def main() -> None:
    workspace, playbooks = discover([FOLDER])
    files = [path for path in [workspace, *playbooks] if path is not None]
    texts = [path.read_text(encoding="utf-8") for path in files]

    def baseline() -> None:
        for text in texts:
            yaml.load(text, Loader=yaml.CSafeLoader)

    def loader() -> None:
        catalog = load([FOLDER])
        assert not catalog.problems, catalog.problems

    base_times: list[float] = []
    load_times: list[float] = []
    for _ in range(REPEATS):
        base_times.append(_time(baseline, ROUNDS))
        load_times.append(_time(loader, ROUNDS))
    best_base, best_load = min(base_times), min(load_times)
    per_file_base_ms = best_base / ROUNDS / len(files) * 1000
    per_file_load_ms = best_load / ROUNDS / len(files) * 1000

    print(f"files per round: {len(files)}, rounds: {ROUNDS}, best of {REPEATS}")
    print(f"{'measure':<34}{'ms per file':>12}")
    print(f"{'baseline: yaml CSafeLoader':<34}{per_file_base_ms:>12.3f}")
    print(f"{'referloop load + every check':<34}{per_file_load_ms:>12.3f}")
    print(f"ratio (load / baseline): {best_load / best_base:.1f}x")


if __name__ == "__main__":
    main()
