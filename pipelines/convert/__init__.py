"""CodeGen -> GPT-J -> FasterTransformer files + Triton config for FauxPilot, verified; plus the embedded export.

``convert(ConvertOptions(...))`` converts, verifies and puts the outputs in place; ``verify_output(dir)``
re-checks a converted folder (sizes, checksums, optionally logits); ``FTModel.load(ft_dir)``
(``pipelines.convert.ftmodel``) is the NumPy reference forward pass over FT files. Importing this package
does not import torch or transformers: only a conversion itself does.
"""

from pipelines.convert.run import ConvertOptions, convert
from pipelines.convert.verify import verify_output

__all__ = ["ConvertOptions", "convert", "verify_output"]
