"""Attacks on cancelflow, each reproduced against the real components and shown to fail."""
