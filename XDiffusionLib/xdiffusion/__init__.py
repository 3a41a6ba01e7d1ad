"""XDiffusion: a 3D MRI volume from one or a few 2D slices, with a cross-sectional diffusion model.

Every volume this library generates is synthetic: a research tool, not a diagnosis.
"""

__version__ = "0.1.0"

__all__ = ["XDiffusionPipeline", "__version__"]


def __getattr__(name: str):
    """`from xdiffusion import XDiffusionPipeline` imports torch and diffusers only when asked for (PEP 562): the CLI
    imports this package first and refuses bad input before any of that is loaded."""
    if name == "XDiffusionPipeline":
        from .pipeline import XDiffusionPipeline

        return XDiffusionPipeline
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
