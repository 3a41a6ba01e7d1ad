"""Tumour labels in and out: the segmentation the user draws on the input slice, as the BraTS label file
`xdiffusion reconstruct --input-segmentation` reads, and the reconstruction's tumour volumes in millilitres.

Segments become BraTS labels by name first, then by order (`brats_values`). On the input, unlike the ground truth of
a comparison (`SceneFiles.labels_array`, which refuses what it cannot name), the order is a safe fallback: the user
drew these segments for this purpose, and the Segment Editor names them Segment_1, Segment_2, ... in drawing order.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np
import slicer

from . import grid
from .scene import BRATS_SEGMENTS, register_segmentation_converters

BRATS_LABELS = (1, 2, 3)
# (label, words in a segment's name that mean it), checked in this order: "non-enhancing" is the core, not enhancing
NAME_RULES = (
    (1, ("necrotic", "necrosis", "ncr", "net", "non-enhancing", "nonenhancing", "1")),
    (2, ("edema", "oedema", "ed", "2")),
    (3, ("enhancing", "et", "3", "4")),
)
VOLUME_KEYS = {1: "tumour_ml_necrotic", 2: "tumour_ml_oedema", 3: "tumour_ml_enhancing"}  # rows of `metrics.METRICS`
WHOLE_TUMOUR_KEY = "tumour_ml_whole"


def brats_value_of_name(name: str) -> int | None:
    """The BraTS label a segment's name says (None: it says none). Words are compared whole ('ed' is not in 'red'),
    except the long ones, which also count inside a word ('peritumouraloedema')."""
    text = name.lower().replace("non-enhancing", "nonenhancing").replace("non enhancing", "nonenhancing")
    words = set(re.findall(r"[a-z]+|\d+", text))
    for value, names in NAME_RULES:
        if any(n in words or (len(n) > 4 and n in text) for n in names):
            return value
    return None


def brats_values(names: Sequence[str]) -> list[int]:
    """The BraTS label of each segment: its name's (`brats_value_of_name`), else the lowest label no segment has
    taken yet, in segment order. More unnamed segments than labels left: ValueError naming the first without one."""
    values = [brats_value_of_name(name) for name in names]
    free = [v for v in BRATS_LABELS if v not in values]
    for index, value in enumerate(values):
        if value is None:
            if not free:
                raise ValueError(f"segment '{names[index]}': no BraTS label left for it; name it necrotic (1), oedema (2) "
                                 f"or enhancing (3), or remove it")
            values[index] = free.pop(0)
    return values


def input_labels_array(files, segmentation_node, input_node) -> np.ndarray:
    """The segmentation as BraTS labels (slicer order k, j, i) on the input's grid; a later segment overwrites an
    earlier one where they overlap."""
    segmentation = segmentation_node.GetSegmentation()
    ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    if not ids:
        raise ValueError(f"the input segmentation {segmentation_node.GetName()} has no segments; draw the tumour first")
    values = brats_values([segmentation.GetSegment(i).GetName() for i in ids])
    labels = np.zeros(grid.dimensions(input_node)[::-1], np.uint8)
    for segment_id, value in zip(ids, values):
        labels[files.segment_mask(segmentation_node, segment_id, input_node)] = value
    return labels


def new_input_segmentation(scene, input_node):
    """An empty segmentation on the input's grid with the three BraTS segments, named and coloured as the outputs
    (1 red, 2 green, 3 blue), ready for the Segment Editor: what is drawn in each maps to its label by name."""
    register_segmentation_converters()
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{input_node.GetName()} tumour on the input")
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(input_node)
    node.SetAndObserveTransformNodeID(input_node.GetTransformNodeID())
    for value, name, rgb in BRATS_SEGMENTS:
        node.GetSegmentation().AddEmptySegment("", name, rgb)
    return node


def volumes_ml(labels: np.ndarray, ijk_to_ras: np.ndarray) -> dict[str, float]:
    """Millilitres of each BraTS label (1-3, 4 counted as 3) and of the whole tumour, keyed as the results table's
    rows: voxels times the voxel's volume, which the grid's IJK-to-RAS matrix gives even for an oblique grid."""
    voxel_ml = abs(float(np.linalg.det(np.asarray(ijk_to_ras)[:3, :3]))) / 1000.0
    labels = np.where(labels == 4, 3, labels)
    volumes = {key: int(np.count_nonzero(labels == value)) * voxel_ml for value, key in VOLUME_KEYS.items()}
    volumes[WHOLE_TUMOUR_KEY] = sum(volumes.values())
    return volumes


def file_volumes_ml(files, path: Path) -> dict[str, float]:
    """`volumes_ml` of a BraTS label file, on the file's own grid, read by Slicer's reader."""
    node = files.read_volume(path, labelmap=True)
    return volumes_ml(slicer.util.arrayFromVolume(node), grid.ijk_to_ras(node))
