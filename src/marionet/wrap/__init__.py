"""marionet.wrap."""
