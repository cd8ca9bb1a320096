"""Rules as code: compiles conditions and actions into plain callables for the node."""
