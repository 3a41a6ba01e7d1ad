"""XDiffusion: a 3D MRI volume from one or a few 2D slices, with a cross-sectional diffusion model.

Every volume this library generates is synthetic: a research tool, not a diagnosis.
"""

__version__ = "0.1.0"
