"""Speed and memory of every policy side by side (see namm/bench.py; same as `namm bench`).

    .venv/bin/python bench/bench_memory.py --lengths 2048,4096,8192,16384 --json-out runs/bench.json
"""
import sys

from namm.bench import main

if __name__ == "__main__":
    sys.exit(main())
