"""The risk model: rolling per-person features and a trained gradient-boosted predictor."""
