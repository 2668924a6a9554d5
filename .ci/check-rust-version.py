#!/usr/bin/env python3
"""Cargo.toml's rust-version must be the real minimum: the highest rust-version among the
crates Cargo.lock pins for the platforms we ship (issue 9 item 20: it said 1.85 while the
lock needed 1.88, so a user on 1.85 got a build error instead of a clear refusal).

Reads `cargo metadata --locked --offline --filter-platform TRIPLE`: the filter drops
dependencies behind a cfg the target never sets (loom, under `cfg(loom)`, needs 1.95 but
is never built). Dev-dependencies count: `cargo test` builds them.
Usage: .ci/check-rust-version.py [TRIPLE...]   (default: x86_64 and aarch64 Linux)
"""

import json
import subprocess
import sys

DEFAULT_TARGETS = ["x86_64-unknown-linux-gnu", "aarch64-unknown-linux-gnu"]


def version(text):
    """'1.88' and '1.88.0' compare equal."""
    parts = [int(p) for p in text.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


def show(v):
    return ".".join(str(p) for p in (v[:2] if v[2] == 0 else v))


def metadata(target):
    out = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--locked", "--offline",
         "--filter-platform", target],
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out)


def main():
    targets = sys.argv[1:] or DEFAULT_TARGETS
    declared = None
    needed, needers = (0, 0, 0), []
    for target in targets:
        meta = metadata(target)
        root = meta["resolve"]["root"]
        in_graph = {node["id"] for node in meta["resolve"]["nodes"]}
        for package in meta["packages"]:
            if package["id"] == root:
                if not package.get("rust_version"):
                    sys.exit("Cargo.toml: no rust-version")
                declared = version(package["rust_version"])
                continue
            if package["id"] not in in_graph or not package.get("rust_version"):
                continue
            v = version(package["rust_version"])
            name = f'{package["name"]} {package["version"]}'
            if v > needed:
                needed, needers = v, [name]
            elif v == needed and name not in needers:
                needers.append(name)
    print(f"rust-version: Cargo.toml says {show(declared)}; the lock needs {show(needed)} "
          f"({', '.join(sorted(needers))}) on {', '.join(targets)}")
    if declared != needed:
        sys.exit(f"error: set rust-version = \"{show(needed)}\" in Cargo.toml (the highest "
                 f"rust-version of the locked dependencies), or change the lock")


if __name__ == "__main__":
    main()
