"""Measurements beyond the objective: effective step sizes, the bias-correction ablation, peak memory."""
