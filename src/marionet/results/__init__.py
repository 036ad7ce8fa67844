"""marionet.results."""
