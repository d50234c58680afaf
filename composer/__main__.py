"""``python -m composer`` is the ``ptc`` command (also under ``torchrun -m composer train ...``)."""
from composer.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
