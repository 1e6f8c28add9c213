"""Record-makers: the one-off measurements behind benchmarks/results/, run from a checkout
(`python -m benchmarks.records.<name>`). Not part of the installed package."""
