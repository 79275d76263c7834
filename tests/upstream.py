"""The stand-in model provider the tests start (:mod:`corral.cli.standin`, shared with
``corral demo``); ``python -m tests.upstream KEY`` serves one until killed."""

from corral.cli.standin import WORDS, StandIn, main, serving

__all__ = ["WORDS", "StandIn", "main", "serving"]

if __name__ == "__main__":
    main()
