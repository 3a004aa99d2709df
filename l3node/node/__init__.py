"""The node's network and durability backbone.

receive (C-ECHO/C-STORE SCP) -> spool (durable files) -> assemble (quiet period)
-> select_series (rules) -> [pipeline] -> outbox (SQLite) -> send (C-STORE SCU,
STOW-RS); audit keeps one record per study round. ``l3node.service`` wires them.
"""
