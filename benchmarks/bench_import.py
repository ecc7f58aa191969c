"""Start-up time: ``import matsteer``, ``import matsteer.core`` and ``matsteer train --help``, each in a fresh process.

Every measure is the wall time of a whole subprocess (interpreter start included; ``python -c pass`` is timed beside
it as the floor), the median of ``--repeats`` runs, with the heavy packages that the import left in
``sys.modules``. The goal: each well under a second (the facade and the CLI's parser import no stage until a name
or a command is used).

    python benchmarks/bench_import.py                         # prints the table
    python benchmarks/bench_import.py --json results/bench/import.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchinfo import machine_fields  # noqa: E402

#: Seconds each measure should stay under.
GOAL_S = 1.0
#: Packages whose presence after an import is reported (the ones that take seconds, and torch).
HEAVY = ("torch", "transformers", "pyvene", "matplotlib", "seaborn", "sklearn", "datasets", "ipywidgets", "nbclient",
         "papermill", "peft", "trl", "lm_eval")
_REPORT = f"import json, sys; print(json.dumps([n for n in {HEAVY!r} if n in sys.modules]))"
#: name -> the statement run in a fresh interpreter.
MEASURES = {
    "python_startup": "pass",
    "import_matsteer": "import matsteer",
    "import_matsteer_core": "import matsteer.core",
}


def time_once(statement: str) -> tuple[float, list[str]]:
    """Wall seconds of ``python -c statement`` (then the report of loaded packages), and those packages."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", f"{statement}\n{_REPORT}"], capture_output=True, text=True,
                          check=True)
    wall = time.perf_counter() - start
    return wall, json.loads(proc.stdout.strip().splitlines()[-1])


def time_entry_point(argv: list[str]) -> float:
    """Wall seconds of the installed ``matsteer`` command (``python -m matsteer`` where it is not installed)."""
    script = Path(sys.executable).with_name("matsteer")
    cmd = [str(script), *argv] if script.is_file() else [sys.executable, "-m", "matsteer", *argv]
    start = time.perf_counter()
    subprocess.run(cmd, capture_output=True, check=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3, help="runs per measure; the median is reported")
    ap.add_argument("--json", dest="json_out", default=None, help="write the results here")
    args = ap.parse_args(argv)

    measures: dict[str, dict[str, Any]] = {}
    for name, statement in MEASURES.items():
        runs = [time_once(statement) for _ in range(args.repeats)]
        measures[name] = {"statement": statement, "runs_s": [w for w, _ in runs],
                          "median_s": statistics.median(w for w, _ in runs), "loaded": runs[-1][1]}
    cli_runs = [time_entry_point(["train", "--help"]) for _ in range(args.repeats)]
    measures["matsteer_train_help"] = {"statement": "matsteer train --help", "runs_s": cli_runs,
                                       "median_s": statistics.median(cli_runs)}
    result = {
        **machine_fields(),
        "python": platform.python_version(),
        "repeats": args.repeats,
        "goal_s": GOAL_S,
        "measures": measures,
        "met": all(m["median_s"] < GOAL_S for k, m in measures.items() if k != "python_startup"),
    }
    width = max(map(len, measures))
    for name, m in measures.items():
        print(f"{name.ljust(width)}  {m['median_s']:6.3f} s  (median of {args.repeats})  "
              f"loaded: {', '.join(m.get('loaded', [])) or '-'}")
    print(f"goal: each under {GOAL_S:g} s: {'met' if result['met'] else 'NOT met'}")
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
