"""Verifiable rewards: math (math_verify), code (sandboxed tests), and the worker pool that scores batches."""
