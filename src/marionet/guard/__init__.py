"""marionet.guard."""
