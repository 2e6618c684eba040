"""Static reports (HTML) of trained models."""
