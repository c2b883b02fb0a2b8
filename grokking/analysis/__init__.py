"""Analysis of trained runs: Fourier progress measures, weight norms, phases."""
