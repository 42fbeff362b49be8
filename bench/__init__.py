"""codesign.bench: benchmarks that print figures (accuracy, latency,
throughput, resource use) for the built accelerators and the verification
flow.
"""
