"""Servers that speak real protocols on 127.0.0.1, started and stopped by test fixtures."""
