"""Command-line tools: skiff-manage, skiff-stat, skiff-passwd and the
management benchmark."""
