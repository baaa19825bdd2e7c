"""Recipes: YAML per model family, validated, resolved per size, run stage by stage."""
