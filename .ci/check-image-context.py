#!/usr/bin/env python3
"""Build deploy/Dockerfile's context without a container engine (issue 9 item 19: the image
could not build because its context lacked benches/, which Cargo.toml declares).

What a container build would see is rebuilt in a temp dir: the repository's tracked files,
filtered by deploy/Dockerfile.dockerignore (docker's rules: patterns in order, `!`
re-includes, the last match wins, a pattern matching a folder matches what is in it), then
every `COPY` of the build stages (not `COPY --from`) into that stage's WORKDIR. In there it
runs the build stage's `cargo build` command exactly as the Dockerfile spells it, then the
runtime stage's `wsgate check` of the baked-in config, with the binary just built.

Set CARGO_TARGET_DIR to reuse an earlier build's dependencies (only wsgate itself is then
compiled again: its path differs). CARGO_NET_OFFLINE is honoured as usual.
Usage: .ci/check-image-context.py [--keep]  (--keep: leave the temp dir and print it)
"""

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCKERFILE = os.path.join(REPO, "deploy", "Dockerfile")
DOCKERIGNORE = DOCKERFILE + ".dockerignore"


def instructions(path):
    """(keyword, argument text) per instruction: continuations joined, comments dropped."""
    out, pending = [], ""
    with open(path) as f:
        for raw in f:
            line = raw.rstrip("\n")
            if not pending and (not line.strip() or line.lstrip().startswith("#")):
                continue
            if pending and line.lstrip().startswith("#"):
                continue
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            text = (pending + line).strip()
            pending = ""
            keyword, _, rest = text.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def glob_regex(pattern):
    """Go's filepath.Match plus docker's `**`: `*` and `?` stop at `/`."""
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            continue
        out += {"*": "[^/]*", "?": "[^/]"}.get(c, re.escape(c))
        i += 1
    return re.compile(out + r"\Z")


def ignore_rules(path):
    rules = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            keep = line.startswith("!")
            pattern = os.path.normpath(line[1:] if keep else line).lstrip("/")
            rules.append((keep, glob_regex(pattern)))
    return rules


def ignored(rel, rules):
    parts = rel.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    verdict = False
    for keep, regex in rules:
        if any(regex.match(p) for p in prefixes):
            verdict = not keep
    return verdict


def tracked_files():
    out = subprocess.run(["git", "-C", REPO, "ls-files", "-z"], check=True,
                         capture_output=True).stdout
    return [p for p in out.decode().split("\0") if p and os.path.isfile(os.path.join(REPO, p))]


def main():
    keep = "--keep" in sys.argv[1:]
    rules = ignore_rules(DOCKERIGNORE)
    context = sorted(p for p in tracked_files() if not ignored(p, rules))
    print(f"image context ({len(context)} files): "
          f"{', '.join(sorted({p.split('/')[0] for p in context}))}")

    tmp = tempfile.mkdtemp(prefix="wsgate-image-")
    try:
        build_context(context, tmp)
    except subprocess.CalledProcessError as e:
        sys.exit(f"error: {' '.join(e.cmd)} failed in the image's build context (exit {e.returncode})")
    finally:
        if keep:
            print(f"context kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def build_context(context, tmp):
    """Copy what the Dockerfile copies into `tmp`, then run its build and check commands."""
    stages, stage, workdir = [], None, "/"
    for keyword, rest in instructions(DOCKERFILE):
        if keyword == "FROM":
            stage = {"name": rest, "copies": [], "runs": []}
            stages.append(stage)
            workdir = "/"
        elif keyword == "WORKDIR":
            workdir = os.path.join(workdir, rest)
            stage["workdir"] = workdir
        elif keyword == "COPY":
            args = shlex.split(rest)
            if any(a.startswith("--from") for a in args):
                continue
            args = [a for a in args if not a.startswith("--")]
            stage["copies"].append((args[:-1], args[-1], workdir))
        elif keyword == "RUN":
            stage["runs"].append(rest)

    root = os.path.join(tmp, "root")
    for stage in stages:
        for sources, dest, wd in stage["copies"]:
            target = os.path.join(root + os.path.join(wd, dest))
            for source in sources:
                src = os.path.normpath(source)
                files = [p for p in context if p == src or p.startswith(src + "/")]
                if not files:
                    sys.exit(f"error: COPY {source}: not in the build context "
                             f"(missing, or excluded by {os.path.relpath(DOCKERIGNORE, REPO)})")
                for p in files:
                    if p == src:
                        into = (os.path.join(target, os.path.basename(p))
                                if dest.endswith("/") or len(sources) > 1 else target)
                    else:
                        into = os.path.join(target, os.path.relpath(p, src))
                    os.makedirs(os.path.dirname(into), exist_ok=True)
                    shutil.copy2(os.path.join(REPO, p), into)

    build = next(s for s in stages if any("cargo build" in r for r in s["runs"]))
    run = next(r for r in build["runs"] if "cargo build" in r)
    command = re.search(r"cargo build[^&;|]*", run).group(0).split()
    src_dir = root + build["workdir"]
    target_dir = os.environ.get("CARGO_TARGET_DIR") or os.path.join(tmp, "target")
    print(f"+ (cd {src_dir} && {' '.join(command)})  CARGO_TARGET_DIR={target_dir}")
    started = time.monotonic()
    subprocess.run(command, cwd=src_dir, check=True,
                   env={**os.environ, "CARGO_TARGET_DIR": target_dir})
    print(f"    ({time.monotonic() - started:.0f}s)")

    # The runtime stage's `RUN ["/usr/local/bin/wsgate", "check", FILE]`, FILE as copied.
    profile = "release" if "--release" in command else "debug"
    binary = os.path.join(target_dir, profile, "wsgate")
    for stage in stages:
        for r in stage["runs"]:
            if r.startswith("[") and "check" in r:
                argv = [a.strip(' "') for a in r.strip("[]").split(",")]
                argv = [binary] + [root + a if a.startswith("/etc/") else a for a in argv[1:]]
                print("+ " + " ".join(argv))
                subprocess.run(argv, check=True)


if __name__ == "__main__":
    main()
