"""Reward throughput, one run, ratios against baselines measured beside it.

Code: tests/s of our fork server in bubblewrap vs firejail per test with the
reference's flags (target >= 15x; `apt-get install firejail` for this benchmark
only) and vs a bare fork server without isolation (the limit; target within 1.5x).
Math: verifications/s of the reward pool vs inline math_verify on a realistic mix
(target >= 3x). Peak memory is printed by each part.

    python bench/rewards.py [--tests 3000] [--math-n 2048] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rewards_code import bench_code, print_code
from rewards_math import bench_math, print_math


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tests", type=int, default=3000, help="code tests per fork-server way (all workers)")
    p.add_argument("--math-n", type=int, default=2048, help="math verifications per way")
    p.add_argument("--json", action="store_true", help="print all figures as JSON too")
    args = p.parse_args()
    code = bench_code(args.tests)
    print_code(code)
    print()
    math = bench_math(args.math_n)
    print_math(math)
    if args.json:
        print(json.dumps({"code": code, "math": math}, indent=2, default=str))


if __name__ == "__main__":
    main()
