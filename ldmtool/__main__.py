"""`python -m ldmtool` runs the command line."""

from ldmtool.cli.main import entry

if __name__ == "__main__":
    entry()
