"""`python -m features` runs the features commands (generate, validate, features)."""

from features.cli import app

if __name__ == "__main__":
    app()
