"""The service layer: turns inbound messages into commands and handles them through ports."""
