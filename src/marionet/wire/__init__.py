"""marionet.wire."""
