"""Compatibility layers: other tools' Python APIs over marionet.

``marionet.compat.scamper`` gives the scamper module's names, so scripts
written for scamper's Python environment run with only the import changed.
"""
