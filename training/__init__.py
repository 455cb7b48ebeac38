"""scf-risk training: feature panel -> calibrated, monotone LightGBM -> MLflow
run + registered model."""
