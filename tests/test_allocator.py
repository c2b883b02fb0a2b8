"""The allocator setting keeps freed tensor memory mapped, so re-allocating it does not page-fault."""

from __future__ import annotations

import subprocess
import sys

import pytest

# glibc adapts its mmap threshold as a process runs, so whether it refaults a block depends on history.
# Both modes first pin the threshold at glibc's 128 KiB default (which also stops the adapting): then
# every 8 MB tensor is a fresh mmap unless keep_freed_memory() has raised the threshold.
FAULTS_PER_ROUND = """
import ctypes, resource, sys, torch
from grokking.allocator import _M_MMAP_THRESHOLD, keep_freed_memory
assert ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, 128 * 1024) == 1
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def one_round():  # a step's worth of activations: four 8 MB tensors, freed together
    xs = [torch.ones(2_000_000) for _ in range(4)]
    del xs
for _ in range(3):
    one_round()
per_round = []
for _ in range(5):  # the least of five blocks: memory pressure from other processes can add stray faults
    start = faults()
    for _ in range(10):
        one_round()
    per_round.append((faults() - start) / 10)
print(min(per_round))
"""
PAGES_PER_ROUND = 4 * 8_000_000 // 4096


def faults_per_round(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", FAULTS_PER_ROUND, mode], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_stops_refaulting_activations() -> None:
    assert faults_per_round("plain") > PAGES_PER_ROUND / 2  # mmapped afresh: nearly every page faults
    assert faults_per_round("keep") < PAGES_PER_ROUND / 100
