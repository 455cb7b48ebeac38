"""`python -m training` runs the training commands (train, promote)."""

from training.cli import app

if __name__ == "__main__":
    app()
