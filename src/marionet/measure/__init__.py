"""marionet.measure."""
