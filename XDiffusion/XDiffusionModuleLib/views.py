"""What the module does to Slicer's views: the slice index kept in step with the slice views (both ways), the
side-by-side comparison, the uncertainty overlay, volume rendering and the tumour inside it. MRML and VTK only."""

from __future__ import annotations

from typing import Callable, Iterable, Optional

import numpy as np
import slicer
import vtk

from . import grid

RENDERING_PRESET = "MR-Default"
HEAD_OPACITY_WITH_TUMOUR = 0.08  # the rendered head's peak opacity while the tumour's surfaces are shown inside it
COMPARE_VIEWS = ("Red", "Yellow")  # ground truth left, reconstruction right (Slicer's side-by-side layout)


def _nodes(scene, class_name: str) -> list:
    nodes = scene.GetNodesByClass(class_name)
    return [nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems())]


def _matrix(vtk_matrix) -> np.ndarray:
    return np.array([[vtk_matrix.GetElement(row, column) for column in range(4)] for row in range(4)])


def slice_node_named(scene, layout_name: str):
    return next((n for n in _nodes(scene, "vtkMRMLSliceNode") if n.GetLayoutName() == layout_name), None)


def composite_node_named(scene, layout_name: str):
    return next((n for n in _nodes(scene, "vtkMRMLSliceCompositeNode") if n.GetLayoutName() == layout_name), None)


class SliceViewFollower:
    """Reports (plane, slice index) of the input volume whenever a slice view moves, and moves the view showing a
    plane to a given index (the panel's slider). It observes the scene's slice nodes only between `attach()` and
    `detach()`: the panel attaches on entering the module and detaches on leaving it, so nothing is rewritten while
    the user works elsewhere."""

    def __init__(self, scene, on_slice: Callable[[str, int], None]):
        self.scene = scene
        self.on_slice = on_slice
        self.volume_node = None
        self.enabled = True
        self.last_slice_node = None
        self._observations: list[tuple[object, int]] = []
        self._observed: set[str] = set()
        self._reported: Optional[tuple[str, int]] = None
        self._moving = False

    @property
    def attached(self) -> bool:
        return bool(self._observations)

    def attach(self) -> None:
        if self.attached:
            return
        self._observations.append((self.scene, self.scene.AddObserver(self.scene.NodeAddedEvent, self._on_node_added)))
        for node in _nodes(self.scene, "vtkMRMLSliceNode"):
            self._observe(node)

    def detach(self) -> None:
        for observed, tag in self._observations:
            observed.RemoveObserver(tag)
        self._observations.clear()
        self._observed.clear()
        self._reported = None

    def _observe(self, slice_node) -> None:
        if slice_node.GetID() in self._observed:
            return
        self._observed.add(slice_node.GetID())
        self._observations.append((slice_node, slice_node.AddObserver(vtk.vtkCommand.ModifiedEvent, self._on_slice_modified)))

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def _on_node_added(self, caller, event, node) -> None:
        if node is not None and node.IsA("vtkMRMLSliceNode"):
            self._observe(node)

    def _on_slice_modified(self, slice_node, event) -> None:
        if self._moving:
            return
        plane = grid.plane_of_slice_view(slice_node.GetOrientation())
        if plane is None:
            return
        self.last_slice_node = slice_node
        if not self.enabled or self.volume_node is None or self.volume_node.GetImageData() is None:
            return
        if grid.is_single_slice(self.volume_node):
            return
        try:
            index = grid.slice_index_in_view(self.volume_node, plane, _matrix(slice_node.GetSliceToRAS()))
        except ValueError:  # the plane is ambiguous on this oblique grid
            return
        if self._reported != (plane, index):
            self._reported = (plane, index)
            self.on_slice(plane, index)

    def current(self, plane: str) -> Optional[int]:
        """The index a slice view showing ``plane`` is at (the last one used first), or None."""
        slice_node = self.slice_node_for(plane)
        if slice_node is None or self.volume_node is None:
            return None
        return grid.slice_index_in_view(self.volume_node, plane, _matrix(slice_node.GetSliceToRAS()))

    def slice_node_for(self, plane: str):
        candidates = [self.last_slice_node] + _nodes(self.scene, "vtkMRMLSliceNode")
        return next((n for n in candidates if n is not None and grid.plane_of_slice_view(n.GetOrientation()) == plane), None)

    def show_slice(self, plane: str, index: int) -> bool:
        """Move the slice view showing ``plane`` onto slice ``index`` of the volume; False if no view shows it."""
        slice_node = self.slice_node_for(plane)
        if slice_node is None or self.volume_node is None:
            return False
        centre = grid.slice_centre(self.volume_node, plane, index)
        self._moving = True
        try:
            slice_node.JumpSliceByOffsetting(*[float(v) for v in centre])
        finally:
            self._moving = False
        self._reported = (plane, int(index))
        self.last_slice_node = slice_node
        return True


def show_side_by_side(scene, reference_node, prediction_node, plane: str, slice_logics: Iterable = ()) -> None:
    """Ground truth left (Red), reconstruction right (Yellow), both in ``plane`` whatever they showed before,
    linked, and fitted to their volumes."""
    layout = next(iter(_nodes(scene, "vtkMRMLLayoutNode")), None)
    if layout is not None:
        layout.SetViewArrangement(slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView)
    orientation = grid.VIEW_ORIENTATION[plane]
    for name, volume in zip(COMPARE_VIEWS, (reference_node, prediction_node)):
        slice_node = slice_node_named(scene, name)
        if slice_node is not None and not slice_node.SetOrientation(orientation):
            raise RuntimeError(f"the {name} slice view has no {orientation} orientation")
        composite = composite_node_named(scene, name)
        if composite is not None:
            composite.SetBackgroundVolumeID(volume.GetID())
            composite.SetForegroundVolumeID(None)
            composite.SetLabelVolumeID(None)
    for composite in _nodes(scene, "vtkMRMLSliceCompositeNode"):
        composite.SetLinkedControl(True)
    for logic in slice_logics:
        if logic.GetSliceNode() is not None and logic.GetSliceNode().GetLayoutName() in COMPARE_VIEWS:
            logic.FitSliceToAll()


def show_uncertainty_overlay(scene, background_node, uncertainty_node, opacity: float = 0.4) -> None:
    """Reconstruction underneath, uncertainty on top, in every slice view."""
    for composite in _nodes(scene, "vtkMRMLSliceCompositeNode"):
        composite.SetBackgroundVolumeID(background_node.GetID())
        composite.SetForegroundVolumeID(uncertainty_node.GetID())
        composite.SetForegroundOpacity(opacity)


def show_volume_rendering(volume_rendering_logic, volume_node, preset_name: str = RENDERING_PRESET):
    """Volume-render ``volume_node`` with Slicer's preset or, where the preset is not installed (a bare MRML scene
    has none), a ramp over its 5th-99th percentiles."""
    logic = volume_rendering_logic
    display = logic.GetFirstVolumeRenderingDisplayNode(volume_node) or logic.CreateDefaultVolumeRenderingNodes(volume_node)
    preset = logic.GetPresetByName(preset_name)
    if preset is not None:
        display.GetVolumePropertyNode().Copy(preset)
    else:
        low, high = (float(v) for v in np.percentile(slicer.util.arrayFromVolume(volume_node), [5.0, 99.0]))
        opacity = vtk.vtkPiecewiseFunction()
        opacity.AddPoint(low, 0.0)
        opacity.AddPoint(high, 0.6)
        colours = vtk.vtkColorTransferFunction()
        colours.AddRGBPoint(low, 0.3, 0.2, 0.15)
        colours.AddRGBPoint(high, 1.0, 0.95, 0.9)
        volume_property = display.GetVolumePropertyNode().GetVolumeProperty()
        volume_property.SetScalarOpacity(opacity)
        volume_property.SetColor(colours)
        volume_property.ShadeOn()
    display.SetVisibility(True)
    return display


def show_tumour_in_rendering(display, segmentation_node, head_opacity: float = HEAD_OPACITY_WITH_TUMOUR) -> None:
    """The tumour as opaque closed surfaces inside the volume-rendered head: the head's opacity transfer function is
    scaled so its peak is ``head_opacity`` (its shape kept), so the head stays as context and no longer hides them."""
    function = display.GetVolumePropertyNode().GetVolumeProperty().GetScalarOpacity()
    points = []
    for index in range(function.GetSize()):
        point = [0.0] * 4  # x, opacity, midpoint, sharpness
        function.GetNodeValue(index, point)
        points.append(point)
    peak = max((point[1] for point in points), default=0.0)
    if peak > head_opacity:
        for index, point in enumerate(points):
            function.SetNodeValue(index, [point[0], point[1] * head_opacity / peak, point[2], point[3]])
    segmentation_node.CreateClosedSurfaceRepresentation()
    tumour_display = segmentation_node.GetDisplayNode()
    tumour_display.SetPreferredDisplayRepresentationName3D("Closed surface")
    tumour_display.SetOpacity3D(1.0)
    tumour_display.SetVisibility3D(True)
    tumour_display.SetVisibility(True)
