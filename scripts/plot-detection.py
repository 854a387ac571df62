#!/usr/bin/env python3
"""Plot detection probability vs cheated tasks from `cairn sim --csv` output.

Usage: python3 scripts/plot-detection.py detection.csv docs/verification-detection.png
Needs matplotlib (`python3 -m pip install matplotlib`).
"""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    ks, sim, theory = [], [], []
    with open(sys.argv[1], newline="") as f:
        for row in csv.DictReader(f):
            ks.append(int(row["cheated_tasks"]))
            sim.append(float(row["simulated"]))
            theory.append(float(row["theory"]))
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    ax.plot(ks, theory, label="theory: 1 − (1 − q)^K, q = p_min = 0.05", color="#1f4e79", linewidth=2)
    ax.plot(ks, sim, label="simulated (cairn sim)", color="#f26b38", linestyle="--", marker="o", markersize=3)
    ax.axhline(0.99, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("cheated tasks K, counted from the first cheat after an honest streak")
    ax.set_ylabel("P(caught within K)")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(0, max(ks))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title("Cairn: detection of a persistent cheater")
    fig.tight_layout()
    fig.savefig(sys.argv[2])


if __name__ == "__main__":
    main()
