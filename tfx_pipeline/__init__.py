"""Continuous training with TFX: filled in by the continuous-training issue."""
