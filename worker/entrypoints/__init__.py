"""Ways into the worker: the command line and the consume loop."""
