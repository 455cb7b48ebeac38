"""scf-risk serving: registered model -> FastAPI scores with SHAP reasons -> audit store."""
