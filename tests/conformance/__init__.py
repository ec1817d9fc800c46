"""The ONNX backend conformance suite, run through slimc.

`cases.py` finds onnx's backend cases and compares outputs the way onnx.backend.test does;
`pool.py` runs them in crash- and hang-tolerant worker processes; `python -m tests.conformance`
prints counts and rewrites `expected_failures.txt`; `tests/test_conformance.py` holds the suite
to that file.
"""
