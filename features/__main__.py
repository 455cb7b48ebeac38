"""`python -m features` runs the scf-risk command line."""

from serving.cli import main

if __name__ == "__main__":
    main()
