"""Benchmarks behind ``make bench``: quality, feature speed, end-to-end scale, serving.

Modules
-------
generator
    Seeded synthetic transaction logs from a BG/NBD + Gamma-Gamma process with known
    parameters (heavy tails, same-day baskets, returns).
peers
    The peer implementations measured against ours (lifetimes BG/NBD + Gamma-Gamma,
    lifetimes and PyMC-Marketing RFM summaries).
run
    The command line entry point; writes ``bench/results*.json`` and ``bench/RESULTS*.md``.
"""
