"""Bias localization: attributing a bias probe to attention heads and soft head pruning (scaling the selected
heads)."""
