"""quantkit: NVFP4 quantization and model packaging for NVIDIA Blackwell."""

__version__ = "0.1.0"
__all__ = ["__version__"]
