"""``python -m edge_agent.cli``: the same entry point as the ``edge-agent`` script."""

from . import main

main()
