"""comfyfleet: rented GPU machines from bare to a verified, running ComfyUI — and a warm pool."""

__version__ = "0.1.0"
