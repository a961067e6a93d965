"""The only code that touches AWS: one module per service we use."""
