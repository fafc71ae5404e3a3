#!/usr/bin/env python3
"""Measure which functions an idle `tug` runs, for crates/tug/code-layout.txt.

Release builds place the functions listed there together (see crates/tug/build.rs), so the
code an idle server or node agent keeps resident is about the code it runs. This script makes
the list: it runs a release `tug` under valgrind's callgrind, which records every instruction
executed, in three scenarios, and writes out the functions those instructions belong to.

  1. `tug server --disable-agent`: start-up, then idle (the control plane alone);
  2. `tug agent` joining a server that runs natively beside it (a node on its own);
  3. `tug server`: the control plane and the node agent in one process.

The list is made of blocks, each in the functions' current address order (which keeps a
crate's code together): what only the agent ran, what both the agent and the control plane
ran, what only the control plane ran, and what only the third scenario added. So the agent's
code and the control plane's are each one stretch, overlapping in the middle.

Rerun it when the list has gone stale: after a Rust or dependency upgrade (symbol hashes
change), or when idle memory grows back. It needs root (the node agent sets up its network),
valgrind, and about twenty minutes (each scenario runs long enough to see the 5-minute
resyncs):

    cargo build --release -p tug
    sudo scripts/code-layout.py --tug target/release/tug
    cargo build --release -p tug   # relinks with the new list
"""

import argparse
import bisect
import contextlib
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEADER = """\
# Functions an idle tug runs, placed together by release builds (crates/tug/build.rs).
# Made by scripts/code-layout.py; regenerate it rather than editing it. A `*` matches any text:
# ThinLTO suffixes the names it makes local with `.llvm.<hash of the code unit>`, which changes
# whenever anything in that unit does.
"""

# ThinLTO's suffix on the names it makes local: `.llvm.` and a number derived from the code.
THINLTO_SUFFIX = re.compile(r"\.llvm\.\d+$")


def run_under_callgrind(tug: Path, name: str, args: list[str], seconds: int, work: Path) -> Path:
    """Run `tug ARGS` under callgrind for SECONDS, stop it as an operator would, return the profile."""
    out = work / f"callgrind-{name}.out"
    command = [
        "valgrind",
        "--tool=callgrind",
        "--dump-instr=yes",
        "--dump-line=no",
        "--compress-pos=no",
        "--compress-strings=no",
        f"--callgrind-out-file={out}",
        str(tug),
        *args,
    ]
    print("running:", " ".join(command[-len(args) - 1 :]), f"for {seconds} s", file=sys.stderr)
    with open(work / "tug.log", "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        time.sleep(seconds)
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=300)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if not out.exists() or out.stat().st_size == 0:
        sys.exit(f"callgrind wrote no profile to {out}; see {work / 'tug.log'}")
    return out


def executed_addresses(profile: Path, binary: Path) -> set[int]:
    """Addresses of the instructions callgrind saw executed in BINARY (positions are absolute)."""
    addresses: set[int] = set()
    in_binary = False
    with open(profile, errors="replace") as lines:
        for line in lines:
            if line.startswith("0x"):
                if in_binary:
                    addresses.add(int(line.split(" ", 1)[0], 16))
            elif line.startswith("ob="):
                in_binary = Path(line[3:].strip()).name == binary.name
    if not addresses:
        sys.exit(f"callgrind recorded no instruction of {binary} in {profile}")
    return addresses


def function_symbols(binary: Path) -> list[tuple[int, int, str]]:
    """(address, size, mangled name) of every function in BINARY, by address."""
    listing = subprocess.run(
        ["nm", "--defined-only", "--print-size", str(binary)], check=True, capture_output=True, text=True
    ).stdout
    symbols = []
    for line in listing.splitlines():
        fields = line.split()
        if len(fields) == 4 and fields[2] in "tTwW":
            symbols.append((int(fields[0], 16), int(fields[1], 16), fields[3]))
    symbols.sort()
    return symbols


def functions_at(addresses: set[int], symbols: list[tuple[int, int, str]]) -> dict[str, int]:
    """The functions containing ADDRESSES, as name -> address.

    Every name at a function's address counts: LLVM's function merging leaves one function's
    name as an alias of another, identical one, and only the section of the one that kept its
    code can be placed.
    """
    starts = [start for start, _, _ in symbols]
    found = {}
    for address in addresses:
        i = bisect.bisect_right(starts, address) - 1
        if i < 0:
            continue
        start = symbols[i][0]
        group = []
        while i >= 0 and symbols[i][0] == start:
            group.append(symbols[i])
            i -= 1
        if address < start + max(max(size for _, size, _ in group), 1):
            found.update((name, start) for _, _, name in group)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tug", type=Path, default=Path("target/release/tug"), help="a release build of tug")
    parser.add_argument("--out", type=Path, default=Path("crates/tug/code-layout.txt"))
    parser.add_argument("--seconds", type=int, default=330, help="how long each scenario runs")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the node agent scenario sets up the pod network")

    tug = args.tug.resolve()
    symbols = function_symbols(tug)

    def measure(name: str, scenario: list[str], work: Path) -> dict[str, int]:
        profile = run_under_callgrind(tug, name, scenario, args.seconds, work)
        functions = functions_at(executed_addresses(profile, tug), symbols)
        size = sum(size for _, size, name in symbols if name in functions)
        print(f"{len(functions)} functions ({size / 2**20:.1f} MiB)", file=sys.stderr)
        return functions

    with tempfile.TemporaryDirectory(prefix="tug-code-layout-") as tmp:
        work = Path(tmp)
        control_plane = measure(
            "control-plane",
            ["server", "--data-dir", str(work / "control-plane"), "--https-listen-port", "16460", "--disable-agent"],
            work,
        )
        with native_server(tug, work / "join-server", 16461) as token:
            agent = measure(
                "agent",
                ["agent", "--server", "https://127.0.0.1:16461", "--token", token, "--data-dir", str(work / "agent"),
                 "--node-name", "code-layout-agent", "--node-ip", "127.0.0.1"],
                work,
            )
        both = measure(
            "with-agent", ["server", "--data-dir", str(work / "with-agent"), "--https-listen-port", "16462"], work
        )

    def block(functions: dict[str, int], *without: dict[str, int]) -> list[str]:
        kept = ((address, name) for name, address in functions.items() if not any(name in w for w in without))
        return [name for _, name in sorted(kept)]

    agent_only = block(agent, control_plane)
    shared = block({name: address for name, address in agent.items() if name in control_plane})
    control_plane_only = block(control_plane, agent)
    ordered = agent_only + shared + control_plane_only + block(both, agent, control_plane)
    patterns = dict.fromkeys(THINLTO_SUFFIX.sub(".llvm.*", name) for name in ordered)
    args.out.write_text(HEADER + "".join(f"{pattern}\n" for pattern in patterns))
    listed = set(ordered)
    total = sum(size for _, size, name in symbols if name in listed)
    print(f"wrote {len(ordered)} functions ({total / 2**20:.1f} MiB of code) to {args.out}", file=sys.stderr)


@contextlib.contextmanager
def native_server(tug: Path, data_dir: Path, port: int):
    """A control plane (no agent) for the agent scenario to join; yields its node token."""
    with open(data_dir.parent / "join-server.log", "ab") as log:
        server = subprocess.Popen(
            [
                str(tug), "server", "--data-dir", str(data_dir), "--https-listen-port", str(port), "--disable-agent",
                # The server writes DATA_DIR/node-token, with its CA's hash, for a --token secret.
                "--token", secrets.token_hex(16),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        token_file = data_dir / "node-token"
        for _ in range(600):
            if token_file.exists() and token_file.read_text().strip():
                break
            if server.poll() is not None:
                sys.exit(f"the server for the agent scenario exited; see {data_dir.parent / 'join-server.log'}")
            time.sleep(0.1)
        else:
            sys.exit(f"the server for the agent scenario wrote no {token_file}")
        yield token_file.read_text().strip()
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
