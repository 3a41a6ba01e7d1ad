"""The module's .ui binds every parameter-node field to a widget that can show its type, and nothing else.

Slicer's parameterNodeWrapper is not importable here, so the fields are read from XDiffusion.py's source (ast): the
same annotations Slicer reads at run time.
"""

from __future__ import annotations

import ast
import xml.etree.ElementTree as ElementTree
from pathlib import Path

MODULE = Path(__file__).resolve().parents[1] / "XDiffusion"
UI_FILE = MODULE / "Resources" / "UI" / "XDiffusion.ui"
# which widget classes Slicer's GUI connectors accept for each annotated type
WIDGETS_FOR_TYPE = {
    "node": {"qMRMLNodeComboBox"},
    "int": {"QSpinBox", "ctkSliderWidget", "QSlider"},
    "bool": {"QCheckBox", "QPushButton"},
    "choice": {"QComboBox"},
    "pathlib.Path": {"ctkPathLineEdit"},
}


def parameter_fields() -> dict[str, tuple[str, ast.expr]]:
    """name -> (kind, annotation) of the class decorated with @parameterNodeWrapper."""
    tree = ast.parse((MODULE / "XDiffusion.py").read_text(encoding="utf-8"))
    wrapped = [c for c in tree.body if isinstance(c, ast.ClassDef) and any(getattr(d, "id", "") == "parameterNodeWrapper" for d in c.decorator_list)]
    assert len(wrapped) == 1
    fields = {}
    for statement in wrapped[0].body:
        if isinstance(statement, ast.AnnAssign):
            text = ast.unparse(statement.annotation)
            if text.startswith("vtkMRML"):
                kind = "node"
            elif "Choice(" in text:
                kind = "choice"
            else:
                kind = text.split("[")[-1].split(",")[0] if text.startswith("Annotated") else text
            fields[statement.target.id] = (kind, statement.annotation)
    return fields


def bound_widgets() -> dict[str, ElementTree.Element]:
    root = ElementTree.parse(UI_FILE).getroot()
    bound = {}
    for widget in root.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                name = prop.find("string").text
                assert name not in bound, f"{name} is bound to two widgets"
                assert prop.get("stdset") == "0", f"{name}: SlicerParameterName must be a dynamic property (stdset=0)"
                bound[name] = widget
    return bound


def test_every_binding_names_a_field_and_every_field_has_a_widget():
    fields, bound = parameter_fields(), bound_widgets()
    assert set(bound) - set(fields) == set(), "widgets bound to fields the parameter node does not have"
    assert set(fields) - set(bound) == set(), "fields with no widget"


def test_each_widget_can_show_its_fields_type():
    fields, bound = parameter_fields(), bound_widgets()
    for name, (kind, annotation) in fields.items():
        assert bound[name].get("class") in WIDGETS_FOR_TYPE[kind], f"{name}: {kind} shown by {bound[name].get('class')}"
        if kind == "node":
            node_types = {s.text for s in bound[name].find("property[@name='nodeTypes']/stringlist")}
            assert node_types == {ast.unparse(annotation)}, f"{name}: combo box lists {node_types}"
        if kind == "choice":
            choices = [c.value for c in annotation.slice.elts[1].args[0].elts]
            items = [i.find("property/string").text for i in bound[name].findall("item")]
            assert items == choices, f"{name}: items {items} differ from choices {choices}"


def test_node_selectors_receive_the_scene_and_the_panel_says_research_tool():
    root = ElementTree.parse(UI_FILE).getroot()
    selectors = {w.get("name") for w in root.iter("widget") if w.get("class") in ("qMRMLNodeComboBox", "qMRMLTableView")}
    receivers = {c.find("receiver").text for c in root.iter("connection") if c.find("slot").text == "setMRMLScene(vtkMRMLScene*)"}
    assert selectors and selectors == receivers
    texts = " ".join(s.text or "" for s in root.iter("string"))
    assert "Research tool" in texts and "not be used for diagnosis" in texts
    names = {w.get("name") for w in root.iter("widget")}
    source = (MODULE / "XDiffusion.py").read_text(encoding="utf-8")
    for used in {part.split(".")[0] for part in source.split("self.ui.")[1:]}:
        assert used in names, f"XDiffusion.py uses self.ui.{used}, which the .ui does not define"
