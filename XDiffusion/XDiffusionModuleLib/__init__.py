"""The XDiffusion module's helpers: everything below the panel's widgets.

Slicer's scripted-module factory loads every `.py` at the top of a module folder as a module of its own, so the
helpers live in this subpackage (as SlicerMONAIAuto3DSeg keeps `MONAIAuto3DSegLib/`). None of them imports Qt or the
`xdiffusion` library: they need only MRML, VTK, numpy and the standard library, so the panel works before the
library is installed, and slicer-core (Slicer's MRML without Qt) exercises all of them in `Testing/`.

- `grid`: slice planes, indices and positions on a node's grid (RAS), and single-slice inputs.
- `scene`: files in and out through Slicer's storage nodes; outputs as generated nodes.
- `views`: following the slice views, the compare layout, overlays and volume rendering.
- `tumour`: the tumour drawn on the input as BraTS labels for the CLI, and tumour volumes in ml.
- `metrics`: readable metric names and units, and the one results table.
- `childprocess`: a child process with reader threads, non-blocking cancel and process-tree termination.
- `cli`: the `xdiffusion` command lines, their JSON output and sidecars.
- `runs`: reconstruction, comparison and model-info jobs, polled from the panel's timer.
- `bundle`, `dependencies`: the library shipped in the extension, and what must be installed before a run.
"""
