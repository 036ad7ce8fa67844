"""marionet.evaluate."""
