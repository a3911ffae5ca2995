"""The risk model's training and inference benchmarks (the engine only loads and runs models)."""
