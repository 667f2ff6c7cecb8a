#!/usr/bin/env python3
"""Helpers of daemon-symbol-order.sh: print function names, one a line.

  daemon-symbol-order.py callgrind CG_OUT...
      every function of the pilot-daemon executable that the callgrind
      dumps show as run (mangled, first-seen order)
  daemon-symbol-order.py faults BINARY PERF_DATA...
      the function at each instruction-fetch page fault inside BINARY's
      text, from `perf record -e exceptions:page_fault_user` files of
      processes running BINARY (resolved with its symbol table)
"""
import bisect
import re
import subprocess
import sys

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.$]*")


def run(*args):
    return subprocess.run(args, capture_output=True, text=True, check=True).stdout


def callgrind(paths):
    seen = {}
    for path in paths:
        ob = cob = None
        with open(path, errors="replace") as f:
            for line in f:
                line = line.rstrip("\n")
                if line.startswith("ob="):
                    ob = line[3:]
                elif line.startswith("cob="):
                    cob = line[4:]
                elif line.startswith(("fn=", "cfn=")):
                    called = line.startswith("cfn=")
                    obj = (cob or ob) if called else ob
                    if called:
                        cob = None
                    if not obj or not obj.endswith("/pilot-daemon"):
                        continue
                    # callgrind marks recursion levels as name'2
                    name = re.sub(r"'\d+$", "", line.split("=", 1)[1])
                    if NAME.fullmatch(name):
                        seen.setdefault(name, None)
    return list(seen)


def faults(binary, files):
    syms = sorted(
        (int(p[0], 16), int(p[1], 16), p[3])
        for p in (l.split() for l in run("nm", "-S", "--defined-only", binary).splitlines())
        if len(p) == 4 and p[2] in "tTwW"
    )
    starts = [s[0] for s in syms]
    m = re.search(r"\.text\s+PROGBITS\s+([0-9a-f]+)\s+([0-9a-f]+)", run("readelf", "-S", "-W", binary))
    delta = int(m[1], 16) - int(m[2], 16)  # virtual address - file offset
    mmap = re.compile(r"\[(0x[0-9a-f]+)\((0x[0-9a-f]+)\) @ (0x[0-9a-f]+|0) .*r-xp \S*pilot-daemon")
    fault = re.compile(r"address=(0x[0-9a-f]+) ip=0x[0-9a-f]+ error_code=(0x[0-9a-f]+)")
    seen = {}
    for f in files:
        text = None  # (start, length, file offset) of the text mapping
        out = run("perf", "script", "-i", f, "--show-mmap-events", "-F", "trace")
        for line in out.splitlines():
            mm = mmap.search(line)
            if mm:
                text = tuple(int(x, 16) for x in mm.groups())
                continue
            fm = fault.search(line)
            if not (fm and text):
                continue
            addr, code = int(fm[1], 16), int(fm[2], 16)
            # error code bit 4: the fault was an instruction fetch
            if code & 0x10 and text[0] <= addr < text[0] + text[1]:
                v = addr - text[0] + text[2] + delta
                j = bisect.bisect_right(starts, v) - 1
                if j >= 0 and v < syms[j][0] + max(syms[j][1], 1):
                    seen.setdefault(syms[j][2], None)
    return list(seen)


def main():
    if len(sys.argv) >= 3 and sys.argv[1] == "callgrind":
        names = callgrind(sys.argv[2:])
    elif len(sys.argv) >= 4 and sys.argv[1] == "faults":
        names = faults(sys.argv[2], sys.argv[3:])
    else:
        sys.exit(__doc__)
    for n in names:
        print(n)


if __name__ == "__main__":
    main()
