"""``python -m vlens`` (and ``accelerate launch -m vlens ...`` / ``torchrun -m vlens ...``) runs the CLI."""

from vlens.cli.main import run

if __name__ == "__main__":
    run()
