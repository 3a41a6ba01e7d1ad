# Stand-in: Slicer writes the extension's description file from the EXTENSION_* variables. As in Slicer's
# slicerFunctionGenerateExtensionDescription, HOMEPAGE and DEPENDS must not be empty; ICONURL, CONTRIBUTORS,
# DESCRIPTION and SCREENSHOTURLS must be defined and only warn when empty.
foreach(var EXTENSION_HOMEPAGE EXTENSION_DEPENDS)
  if("${${var}}" STREQUAL "")
    message(FATAL_ERROR "standin: ${var} is empty")
  endif()
endforeach()
foreach(var EXTENSION_HOMEPAGE EXTENSION_CONTRIBUTORS EXTENSION_DESCRIPTION EXTENSION_ICONURL EXTENSION_SCREENSHOTURLS EXTENSION_DEPENDS)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "standin: ${var} is not defined")
  endif()
  standin_record(${var} "${${var}}")
endforeach()
standin_record(EXTENSION_NAME "${PROJECT_NAME}")
set(STANDIN_CONFIG_GENERATED TRUE)
