"""clv_training: Customer Lifetime Value training, registry and serving."""

__version__ = "0.1.0"
