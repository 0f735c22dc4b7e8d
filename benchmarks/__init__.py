"""Reproducible timing and memory runs; each writes JSON and a markdown table under results/."""
