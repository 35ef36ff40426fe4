from .cli import main

# Guarded: the image pool's worker processes import the main module (multiprocessing's
# forkserver does), and must not start a run of their own.
if __name__ == "__main__":
    raise SystemExit(main())
