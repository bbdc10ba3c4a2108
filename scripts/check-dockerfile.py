#!/usr/bin/env python3
"""Checks that the Dockerfile's dependency-cache stage copies every workspace member's manifest
(and gives it an empty target), so that `docker build` works without a Docker engine to try it.

Usage: scripts/check-dockerfile.py   (from the repository root)
"""
import re
import sys
import tomllib

members = tomllib.load(open("Cargo.toml", "rb"))["workspace"]["members"]
docker = open("Dockerfile", encoding="utf-8").read()
copied = set(re.findall(r"^COPY\s+(\S+)/Cargo\.toml\s+\1/Cargo\.toml\s*$", docker, re.M))
stub_line = next((l for l in docker.splitlines() if "for m in" in l), "")
stubbed = set(stub_line.split("for m in", 1)[1].split(";")[0].split()) if stub_line else set()
stubbed |= set(re.findall(r"mkdir -p (\S+)/src && echo 'fn main\(\) \{\}'", docker))
problems = []
for m in members:
    if m not in copied:
        problems.append(f"Dockerfile does not copy {m}/Cargo.toml before `cargo fetch`")
    if m not in stubbed:
        problems.append(f"Dockerfile gives {m} no empty target before `cargo fetch`")
for m in sorted(copied - set(members)):
    problems.append(f"Dockerfile copies {m}/Cargo.toml, which is not a workspace member")
if "cargo build --release --locked -p switchyard" not in docker:
    problems.append("Dockerfile does not build the `switchyard` package")
for p in problems:
    print(p, file=sys.stderr)
if problems:
    sys.exit(1)
print(f"Dockerfile copies all {len(members)} workspace manifests")
