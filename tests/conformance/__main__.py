"""python -m tests.conformance [--runner compiled|interpreter] [--filter REGEX] [--write-expected]

Runs onnx's backend cases through slimc and prints counts (passed / failed = wrong answer /
refused = clean SlimcError / errored = other exception / crash / hang), the top reasons, and
every wrong answer, crash and hang. --write-expected rewrites expected_failures.txt from a
full compiled run (read the diff before committing it). Run from the repository root.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.conformance", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runner", choices=("compiled", "interpreter"), default="compiled")
    ap.add_argument("--filter", help="regex searched in case names")
    ap.add_argument("--kinds", default="node,simple,pytorch-converted,pytorch-operator,real",
                    help="comma list of case kinds")
    ap.add_argument("--workers", "-j", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--timeout", type=float, default=60.0,
                    help="seconds per case, then 'hang' (the 'real' CNN cases get 300)")
    ap.add_argument("--threads", type=int, default=1, help="compile option threads= (compiled)")
    ap.add_argument("--cache", action="store_true",
                    help="keep slimc's compile cache on in the workers (off by default)")
    ap.add_argument("--write-expected", action="store_true",
                    help="rewrite expected_failures.txt from this run (compiled, no filter)")
    ap.add_argument("--check", action="store_true",
                    help="compare with expected_failures.txt as the tests do; exit 1 on a mismatch")
    ap.add_argument("--json", help="write every case's result to this file")
    ap.add_argument("--top", type=int, default=15, help="how many reasons to show per status")
    args = ap.parse_args(argv)

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if root not in sys.path:
        sys.path.insert(0, root)
    from tests.conformance import cases as C
    from tests.conformance.pool import run_cases

    if args.write_expected and (args.runner != "compiled" or args.filter or
                                args.kinds != ap.get_default("kinds")):
        ap.error("--write-expected needs a full compiled run (no --filter, --kinds, --runner)")
    os.environ.setdefault("SLIMC_VERIFY", "1")  # as the tests run (tests/conftest.py)
    env = {"SLIMC_VERIFY": os.environ["SLIMC_VERIFY"]}
    if not args.cache:
        env["SLIMC_CACHE_DIR"] = "off"
    elif os.environ.get("SLIMC_CACHE_DIR"):
        env["SLIMC_CACHE_DIR"] = os.environ["SLIMC_CACHE_DIR"]
    else:
        env["SLIMC_CACHE_DIR"] = ""  # slimc's default folder

    def load_cases():  # runs while the workers start
        cases = C.discover(kinds=args.kinds.split(","), name_filter=args.filter)
        print(f"{len(cases)} cases, runner={args.runner}, workers={args.workers}, "
              f"timeout={args.timeout:g}s", flush=True)
        return cases

    results, wall = run_cases(load_cases, runner=args.runner, workers=args.workers,
                              timeout=args.timeout, progress=True, threads=args.threads, env=env)
    print(C.summary(results, wall, top=args.top))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(runner=args.runner, seconds=round(wall, 1),
                           cases=sorted(results.values(), key=lambda r: r["name"])), f, indent=1)
    rc = 0
    if args.check or (args.runner == "compiled" and not args.write_expected):
        problems = C.check_against_expected(results, C.read_expected())
        for what, items in problems.items():
            if items:
                print(f"\n{what.replace('_', ' ')} vs expected_failures.txt ({len(items)}):")
                print("\n".join("  " + x for x in items[:50]))
        if args.check and any(problems.values()):
            rc = 1
    if args.write_expected:
        n = C.write_expected(results)
        print(f"\nwrote {n} cases to {os.path.relpath(C.EXPECTED_FILE)}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
