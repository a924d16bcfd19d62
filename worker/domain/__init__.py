"""The backorder domain: pure Python, no I/O, no clock. Time and stock come in as arguments."""
