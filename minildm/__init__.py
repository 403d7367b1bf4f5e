"""minildm: latent diffusion from first principles, the package behind the lessons.

One module per idea (see the README's lesson map). Import the modules you need:
``from minildm import schedules, samplers``.
"""

__version__ = "0.1.0"
